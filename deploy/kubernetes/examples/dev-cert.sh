#!/bin/sh
# Makes a private CA and a certificate for a trial of deploy/kubernetes:
# ca.crt (agents verify the edge with it: pico-agent --ca ca.crt), tls.crt
# and tls.key (the pico-edge-tls Secret). In production use certificates
# from your CA or cert-manager, with the same names.
#
#   sh dev-cert.sh pico.example.com [namespace]
#   kubectl -n pico create secret tls pico-edge-tls --cert=tls.crt --key=tls.key
#   kubectl -n pico create configmap pico-edge-ca --from-file=ca.crt=ca.crt
#
# Names in the certificate: DOMAIN and *.DOMAIN (clients reach endpoint
# foo at foo.DOMAIN), and the agents Service inside the cluster.
set -eu
domain=${1:?usage: dev-cert.sh DOMAIN [NAMESPACE]}
ns=${2:-pico}
days=365
openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
	-keyout ca.key -out ca.crt -days "$days" -subj "/CN=Pico trial CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
	-keyout tls.key -out tls.csr -subj "/CN=$domain" 2>/dev/null
printf '%s\n' \
	"basicConstraints=critical,CA:FALSE" \
	"keyUsage=critical,digitalSignature" \
	"extendedKeyUsage=serverAuth" \
	"subjectAltName=DNS:$domain,DNS:*.$domain,DNS:pico-edge-agents.$ns.svc,DNS:pico-edge-agents.$ns.svc.cluster.local" >tls.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
	-out tls.crt -days "$days" -extfile tls.ext 2>/dev/null
rm -f tls.csr tls.ext ca.srl
chmod 600 ca.key tls.key
echo "wrote ca.crt, ca.key (keep it offline), tls.crt and tls.key for $domain, *.$domain and pico-edge-agents.$ns.svc"
