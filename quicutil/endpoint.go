package quicutil

import "fmt"

// ValidateEndpointID reports whether id is a valid endpoint ID: a DNS label
// of 1 to 63 characters from a-z, 0-9 and '-', not starting or ending with '-'.
func ValidateEndpointID(id string) error {
	if id == "" {
		return fmt.Errorf("endpoint ID is empty")
	}
	if len(id) > MaxEndpointLen {
		return fmt.Errorf("endpoint ID %.20q... is %d characters (max %d)", id, len(id), MaxEndpointLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(id)-1 {
				return fmt.Errorf("endpoint ID %q starts or ends with '-'", id)
			}
		default:
			return fmt.Errorf("endpoint ID %q has %q (allowed: a-z, 0-9, '-')", id, id[i:i+1])
		}
	}
	return nil
}
