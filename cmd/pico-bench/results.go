package main

import "time"

// Results is the JSON document a run writes. Throughputs are in their
// natural units (requests/s, MiB/s = 2^20 bytes/s), latencies in
// microseconds, memory in KiB, CPU in seconds, ratios in percent
// (pico / baseline × 100) unless the name says otherwise.
type Results struct {
	Schema    int       `json:"schema"`
	StartedAt time.Time `json:"started_at"`
	Seconds   float64   `json:"wall_seconds"`
	Host      HostInfo  `json:"host"`
	Options   OptsInfo  `json:"options"`

	Small    []SmallRow  `json:"scenario_a_small,omitempty"`
	Bulk     *BulkRow    `json:"scenario_b_1mib,omitempty"`
	QUICCopy *QUICCopy   `json:"scenario_c_quic_copy,omitempty"`
	Idle     *IdleResult `json:"scenario_d_idle,omitempty"`
	TLS      []TLSRow    `json:"scenario_e_tls,omitempty"`
	// TLSNotes say what scenario E left out or substituted, and why.
	TLSNotes []string `json:"scenario_e_notes,omitempty"`

	// Relay is scenario F: small requests through the agent's node (the
	// baseline) and through another node that relays them.
	Relay []RelayRow `json:"scenario_f_relay,omitempty"`

	// Upload is scenario G, TCP scenario H, WebSocket scenario I.
	Upload    *UploadRow    `json:"scenario_g_upload,omitempty"`
	TCP       *TCPResult    `json:"scenario_h_tcp_forward,omitempty"`
	WebSocket []WSRow       `json:"scenario_i_websocket,omitempty"`
	BulkLinks []BulkLinkRow `json:"scenario_b_agent_links,omitempty"`
	// LinkNotes say what --agent-connections did.
	LinkNotes []string `json:"agent_links_notes,omitempty"`
	// Scale, Regs and WS are scenarios S, R and W (scenario_scale.go, scenario_ws.go).
	Scale *ScaleResult `json:"scenario_s_scale,omitempty"`
	Regs  *RegResult   `json:"scenario_r_registrations,omitempty"`
	WS    *WSResult    `json:"scenario_w_websockets,omitempty"`
	// Floor is scenario T (floor.go).
	Floor []FloorRow `json:"scenario_t_tunnel_floor,omitempty"`
	// Transport is scenario X (scenario_x.go): the agent's TCP transport
	// beside QUIC.
	Transport []TransportRow `json:"scenario_x_transport,omitempty"`

	// PicoVsQUICPct is scenario B's Pico MiB/s over scenario C's quic-go
	// copy MiB/s, in percent (target >= 100).
	PicoVsQUICPct float64 `json:"pico_1mib_c4_vs_quic_copy_pct,omitempty"`

	// PeakRSSKiB is VmHWM of the edge and agent of scenarios A and B.
	PeakRSSKiB map[string]int64 `json:"peak_rss_kib,omitempty"`

	// VsLast compares this run with the results file it replaced
	// (--json), started at LastStartedAt.
	VsLast        []Change  `json:"vs_last,omitempty"`
	LastStartedAt time.Time `json:"last_started_at,omitzero"`

	Warnings []string `json:"warnings,omitempty"`
	Errors   []string `json:"errors,omitempty"`
}

type HostInfo struct {
	NProc        int    `json:"nproc"`
	CPUModel     string `json:"cpu_model,omitempty"`
	Kernel       string `json:"kernel,omitempty"`
	GoVersion    string `json:"go_version"`
	GitCommit    string `json:"git_commit,omitempty"`
	GitDirty     bool   `json:"git_dirty"`
	WrkVersion   string `json:"wrk_version,omitempty"`
	H2loadVer    string `json:"h2load_version,omitempty"`
	LoadAvgStart string `json:"loadavg_start,omitempty"`
	LoadAvgEnd   string `json:"loadavg_end,omitempty"`
	UDPRmemMax   int64  `json:"udp_rmem_max,omitempty"`
	UDPWmemMax   int64  `json:"udp_wmem_max,omitempty"`
}

type OptsInfo struct {
	DurationS  float64  `json:"duration_s"`
	WarmupS    float64  `json:"warmup_s"`
	Scenarios  []string `json:"scenarios"`
	IdleAgents int      `json:"idle_agents"`
	Repeat     int      `json:"repeat"`
	QuietWaitS float64  `json:"quiet_wait_s"`
}

// WrkRun is one wrk run and the CPU the processes involved spent during it.
type WrkRun struct {
	Target  string    `json:"target"` // "direct" or "pico"
	URL     string    `json:"url"`
	Threads int       `json:"threads"`
	Conns   int       `json:"conns"`
	Result  WrkResult `json:"wrk"`
	// CPUSeconds per process role (edge, agent, upstream, wrk) during the run.
	CPUSeconds map[string]float64 `json:"cpu_seconds"`
	// CPUPer1kReq is CPUSeconds per 1000 completed requests.
	CPUPer1kReq map[string]float64 `json:"cpu_seconds_per_1k_requests"`
	// CoresBusy is the CPU of all roles over the run's wall time.
	CoresBusy float64 `json:"cores_busy"`
	// HostCoresBusy is the whole host's busy CPU over the run's wall time
	// (/proc/stat); OtherCores = HostCoresBusy - CoresBusy is work that is
	// not the benchmark's, i.e. noise from other processes.
	HostCoresBusy float64 `json:"host_cores_busy"`
	OtherCores    float64 `json:"other_cores"`
	// PeakRSSKiB is the VmHWM of each Pico process (edge, agent, relay)
	// during this run alone.
	PeakRSSKiB map[string]int64 `json:"peak_rss_kib,omitempty"`
}

// PairRatio is one direct/pico pair of runs of a repeated measurement.
type PairRatio struct {
	Direct   float64 `json:"direct"` // req/s or MiB/s
	Pico     float64 `json:"pico"`
	RatioPct float64 `json:"ratio_pct"`
}

// SmallRow is scenario A at one connection count.
type SmallRow struct {
	// Path is /small (a GET) or /post (a POST of postBytes); empty in
	// results written before POSTs were measured.
	Path  string `json:"path,omitempty"`
	Conns int    `json:"conns"`
	// Direct and Pico are the pair whose ratio is the median of Pairs.
	Direct        WrkRun  `json:"direct"`
	Pico          WrkRun  `json:"pico"`
	ReqRatioPct   float64 `json:"req_per_sec_ratio_pct"`
	P50RatioTimes float64 `json:"p50_ratio_times"` // pico p50 / direct p50
	P99RatioTimes float64 `json:"p99_ratio_times"`
	// Pairs are all the repeats (--repeat), in run order.
	Pairs []PairRatio `json:"pairs"`
}

// BulkRow is scenario B.
type BulkRow struct {
	Conns       int     `json:"conns"`
	Direct      WrkRun  `json:"direct"`
	Pico        WrkRun  `json:"pico"`
	DirectMiBps float64 `json:"direct_mib_per_sec"`
	PicoMiBps   float64 `json:"pico_mib_per_sec"`
	RatioPct    float64 `json:"ratio_pct"`
	// CPUPerGiB is, for the Pico run, CPU seconds per GiB transferred.
	CPUPerGiB map[string]float64 `json:"pico_cpu_seconds_per_gib"`
	Pairs     []PairRatio        `json:"pairs"`
}

// QUICCopy is scenario C.
type QUICCopy struct {
	Bytes     int64   `json:"bytes"`
	Seconds   float64 `json:"seconds"` // at the sink, first byte to EOF
	MiBps     float64 `json:"mib_per_sec"`
	SourceCPU float64 `json:"source_cpu_seconds"`
	SinkCPU   float64 `json:"sink_cpu_seconds"`
	// CPU seconds per GiB copied, to set beside scenario B's CPU per GiB.
	SourceCPUPerGiB float64 `json:"source_cpu_seconds_per_gib"`
	SinkCPUPerGiB   float64 `json:"sink_cpu_seconds_per_gib"`
	SendSeconds     float64 `json:"source_send_seconds"`
	// Sender's view at the end of the copy.
	PacketsSent uint64  `json:"packets_sent"`
	PacketsLost uint64  `json:"packets_lost"`
	SRTTMs      float64 `json:"srtt_ms"`
	CwndBytes   uint64  `json:"cwnd_bytes"`
	OtherCores  float64 `json:"other_cores"`
	// AllMiBps are all repeats; MiBps is their median.
	AllMiBps []float64 `json:"all_mib_per_sec"`
}

// IdleResult is scenario D.
type IdleResult struct {
	Links        int   `json:"links"`
	RSSBeforeKiB int64 `json:"rss_before_kib"`
	// RSSHalfKiB is the RSS with the first half of the links connected;
	// SlopeKiB = (after - half) / (second half): the per-link cost without
	// the edge's one-time costs of its first connections.
	RSSHalfKiB     int64   `json:"rss_half_kib"`
	SlopeKiB       float64 `json:"kib_per_link_slope"`
	RSSAfterKiB    int64   `json:"rss_after_kib"`
	RSSSamplesKiB  []int64 `json:"rss_after_samples_kib"`
	PerLinkKiB     float64 `json:"kib_per_link"`
	ConnectSeconds float64 `json:"connect_seconds"`
	// IdleCPUPct is the edge's CPU, in percent of one core, with the
	// links connected and idle (keep-alives) over the settle window.
	IdleCPUPct float64 `json:"edge_idle_cpu_pct_of_core"`

	EPLinks         int     `json:"endpoint_phase_links"`
	EPPerLink       int     `json:"endpoint_phase_endpoints_per_link"`
	EPRSSBeforeKiB  int64   `json:"endpoint_phase_rss_before_kib"`
	EPRSSAfterKiB   int64   `json:"endpoint_phase_rss_after_kib"`
	PerEndpointKiB  float64 `json:"kib_per_endpoint"`
	MarginalEPKiB   float64 `json:"kib_per_extra_endpoint"`
	EPConnectSecond float64 `json:"endpoint_phase_connect_seconds"`
}

// LoadRun is one scenario E run (h2load or h3load) and the CPU the
// processes involved spent during it.
type LoadRun struct {
	Target string     `json:"target"` // "direct" or "pico"
	URL    string     `json:"url"`
	Result LoadResult `json:"result"`
	// CPUSeconds per process role (edge, agent, upstream, client).
	CPUSeconds    map[string]float64 `json:"cpu_seconds"`
	CPUPer1kReq   map[string]float64 `json:"cpu_seconds_per_1k_requests"`
	CoresBusy     float64            `json:"cores_busy"`
	HostCoresBusy float64            `json:"host_cores_busy"`
	OtherCores    float64            `json:"other_cores"`
	PeakRSSKiB    map[string]int64   `json:"peak_rss_kib,omitempty"` // as WrkRun's
}

// TLSRow is scenario E for one protocol: the same client and protocol
// against the upstream's TLS listener (direct) and the edge's HTTPS front
// door (pico; the edge reaches the upstream through the agent over plain
// HTTP/1.1).
type TLSRow struct {
	Proto         string      `json:"proto"` // "h2" or "h3"
	Client        string      `json:"client"`
	Conns         int         `json:"conns"`
	Streams       int         `json:"streams_per_conn"`
	Direct        LoadRun     `json:"direct"`
	Pico          LoadRun     `json:"pico"`
	ReqRatioPct   float64     `json:"req_per_sec_ratio_pct"`
	P50RatioTimes float64     `json:"p50_ratio_times"`
	P99RatioTimes float64     `json:"p99_ratio_times"`
	Pairs         []PairRatio `json:"pairs"`
}

// RelayRow is one connection count of scenario F. Direct is the upstream
// alone, Node the agent's node, Relay another node relaying to it.
type RelayRow struct {
	Conns         int         `json:"conns"`
	Direct        WrkRun      `json:"direct"`
	Node          WrkRun      `json:"node"`
	Relay         WrkRun      `json:"relay"`
	ReqRatioPct   float64     `json:"relay_vs_node_req_per_sec_pct"`
	P50RatioTimes float64     `json:"relay_vs_node_p50_times"`
	Pairs         []PairRatio `json:"pairs"`
}
