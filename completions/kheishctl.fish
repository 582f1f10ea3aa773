# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_kheishctl_global_optspecs
    string join \n state-root= connectors-config= json q/quiet v/verbose color= h/help V/version
end

function __fish_kheishctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_kheishctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_kheishctl_using_subcommand
    set -l cmd (__fish_kheishctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c kheishctl -n "__fish_kheishctl_needs_command" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_needs_command" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_needs_command" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_needs_command" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "serve" -d 'Run the gateway daemon'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "validate" -d 'Validate a connector file and the secrets it references'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "sign" -d 'Sign a request body the way ingress verifies it'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "rotate-secret" -d 'Write a new value into a secret-store slot'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "put-external" -d 'Create or update a daemon-managed external connector'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "replay" -d 'Replay or resolve dead-lettered deliveries'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "inspect-receipts" -d 'List ingress receipts from the state root'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "drain-deliveries" -d 'Run the delivery worker in this process until the queue is drained'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "man" -d 'Print a man page (for packagers)'
complete -c kheishctl -n "__fish_kheishctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l listen -d 'Address to listen on (port 0 picks a free port; the readiness line names it)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l workers -d 'Threads for the requests\' database work (the listener\'s blocking pool; default: 4 × available cores). Connections and long-polls hold no thread of their own' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l max-connections -d 'Open connections allowed in all; past it a new connection is answered 503 overloaded and closed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l max-connections-per-client -d 'Open connections allowed from one client address; past it that client\'s new connections are answered 503 overloaded and closed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l header-timeout -d 'A connection must send its whole request head within this (from the connection, or from the first byte of a later request); else it is closed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l request-timeout -d 'The whole request, head and body, must arrive within this; a stalled body is answered 408 and the connection closed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l idle-timeout -d 'A keep-alive connection may wait this long for its next request before it is closed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l handler -d 'How runs are handled' -r -f -a "none\t'Runs wait for an external worker to claim them through the control plane'
exec\t'Each run is piped as JSON to --handler-command; its stdout is the output'
echo\t'Replies with the inbound content (a working default for trying the gateway)'"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l handler-command -d 'With --handler exec: the program, then its arguments, one per flag (e.g. --handler-command python3 --handler-command handler.py)' -r -f -a "(__fish_complete_command)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l handler-concurrency -d 'With --handler exec or echo: runs handled at the same time' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l handler-timeout -d 'With --handler exec: a run whose command takes longer is killed and failed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l admin-token-env -d 'Read the admin token from this environment variable' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l admin-token-file -d 'Read the admin token from this file (one trailing newline is stripped). The file is re-read when it changes, so the token rotates without a restart' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l readonly-token-env -d 'Read a read-only control-plane token from this environment variable: accepted on GET routes only (metrics scrapers, dashboards); writes with it answer 403. Must differ from the admin token' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l readonly-token-file -d 'Read the read-only token from this file (re-read when it changes)' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l delivery-workers -d 'Delivery worker threads sending queued output to reply targets (0 disables delivery in this daemon; `drain-deliveries` can still send)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l receipt-retention -d 'How long submitted ingress receipts are kept' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l receipt-max-per-connector -d 'At most this many receipts are kept per connector (oldest pruned first)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand serve" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l offline -d 'Skip checks that need the environment or the state root (env vars, secret slots)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l deny-warnings -d 'Treat warnings (inline secrets, ignored secret sources) as errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand validate" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l body -d 'The request body to sign: a file, or - for standard input' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l connector -d 'Use this HTTP connector\'s HMAC secret and its ingress path /v1/connectors/http/NAME (with --scheme slack: that Slack connector\'s signing secret)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l secret-env -d 'Read the secret from this environment variable' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l secret-file -d 'Read the secret from this file (one trailing newline is stripped)' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l secret-ref -d 'Read the secret from this secret-store slot in the state root' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l path -d 'The request target exactly as it will be sent (path and query), e.g. /v1/connectors/http/orders?src=a' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l url -d 'The full URL; gives host (for curl) and path+query at once' -r -f
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l method -d 'The HTTP method that is signed' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l timestamp -d 'Unix timestamp in seconds to sign with (default: now)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l scheme -d 'The signature scheme' -r -f -a "kheish\t'X-Kheish-Timestamp / X-Kheish-Signature: v1=HMAC(v1:METHOD:PATH:TS:BODY)'
slack\t'X-Slack-Request-Timestamp / X-Slack-Signature: v0=HMAC(v0:TS:BODY)'"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l format -d 'What to print' -r -f -a "headers\t'Two header lines'
json\t'One JSON object'
curl\t'A ready-to-run curl command (quiet: -sS; --curl-fail adds --fail-with-body)'"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l verify -d 'Check this signature instead of printing one: exit 0 on match, 1 on mismatch (constant time)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l curl-fail -d 'With --format curl: the command exits non-zero (22) when the answer is an HTTP error, still printing its body (curl --fail-with-body, curl 7.76 or newer)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand sign" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l from-env -d 'Take the new value from this environment variable' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l from-file -d 'Take the new value from this file (one trailing newline is stripped)' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l bytes -d 'Bytes of entropy for --generate (16..=1024)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l grace -d 'Keep accepting the previous value for inbound verification for this long (e.g. 10m)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l connector -d 'Re-bind this daemon-managed connector (KIND/NAME) to the rotated slot (needs --field)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l field -d 'The connector\'s secret field to re-bind (e.g. shared_token, bearer_token, hmac_secret, bot_token, signing_secret, secret_token)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l stdin -d 'Take the new value from standard input (one trailing newline is stripped)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l generate -d 'Generate a random URL-safe value and print it once on stdout'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand rotate-secret" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l file -d 'Members from a file: TOML (one [[external_connectors]] table or a bare table) or JSON' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l platform -d 'The platform the sidecar bridges (required for a new connector; cannot change)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l mode -d 'How the sidecar runs' -r -f -a "remote_http\t'The sidecar runs elsewhere and is reached at --base-url'
child_process\t'The daemon starts and supervises the sidecar (--command) on a loopback --base-url'"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l base-url -d 'The sidecar\'s base URL (http/https; loopback for child_process)' -r -f
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l allow-private-network -d 'Allow a remote_http base URL on a loopback, private or link-local address' -r -f -a "true\t''
false\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l shared-token-env -d 'The shared token comes from this environment variable of the daemon' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l shared-token-secret-ref -d 'The shared token comes from this secret-store slot' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l allow-unauthenticated-ingress -d 'Accept sidecar ingress without a shared token (must be explicit)' -r -f -a "true\t''
false\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l fixed-session-id -d 'Put every event into this session ("" clears it)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l include-self-output -d 'Also deliver output to the conversation the event came from' -r -f -a "true\t''
false\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l ingress-events-per-second -d 'Ingress rate limit of this connector (events per second, at least 1)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l command -d 'child_process: the sidecar program' -r -f -a "(__fish_complete_command)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l arg -d 'child_process: one argument of the program (repeat in order; replaces the stored list)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l env -d 'child_process: one environment variable K=V of the sidecar (repeat; replaces the stored table). Not for secrets: use --credential-slot' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l credential-slot -d 'child_process: a credential the sidecar may lease, ENV_KEY=SECRET_REF (repeat; replaces the stored table). The slot must exist and be non-empty' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l working-dir -d 'child_process: the sidecar\'s working directory ("" clears it)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l shared-token-stdin -d 'Read the shared token from standard input (one trailing newline is stripped) and store it in slot connectors.external.NAME.shared_token'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l dry-run -d 'Print the result and the field-by-field diff; write nothing'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand put-external" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l connector -d 'Only deliveries of runs from this connector (KIND/NAME)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l plugin -d 'Only deliveries to this plugin (http, slack, telegram, external)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l session -d 'Only deliveries of this session' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l run -d 'Only deliveries of this run' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l since -d 'Only dead letters since WHEN (a duration ago like 1h, or an RFC 3339 time)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l limit -d 'At most this many dead letters with --all' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l reason -d 'Why the dead letters are resolved (recorded with --resolve)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l all -d 'Select dead letters with the filters below instead of naming them'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l include-resolved -d 'Also select dead letters that were already resolved'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l force -d 'Replay even when a replay of the dead letter exists already'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l dry-run -d 'Show what would happen; change nothing'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l resolve -d 'Mark the selected dead letters as handled instead of replaying them'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand replay" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l connector -d 'Only receipts of this connector (KIND/NAME, e.g. http/orders)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l key -d 'Find the receipt of this raw idempotency key / event id / update id (hashed the way ingress hashes it). With --connector it is one look-up; without, the receipts of every connector are searched for the key\'s digest' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l run -d 'Only the receipt of this run' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l session -d 'Only receipts of this session' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l since -d 'Only receipts received since WHEN (a duration ago like 1h, or an RFC 3339 time)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l limit -d 'At most this many rows' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand inspect-receipts" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l timeout -d 'Stop after this long even if due deliveries are left (exit 3)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l plugin -d 'Only deliveries to this plugin' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l connector -d 'Only deliveries of runs from this connector (KIND/NAME)' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l concurrency -d 'Deliveries sent at the same time' -r
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l ignore-backoff -d 'Also send deliveries whose retry time has not come yet, until nothing is pending'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand drain-deliveries" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -l state-root -d 'The state root directory (created 0700 when a command needs to write)' -r -f -a "(__fish_complete_directories)"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -l connectors-config -d 'The TOML connector file' -r -F
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -l color -d 'When to color human output; NO_COLOR is honoured under `auto`' -r -f -a "auto\t''
always\t''
never\t''"
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -l json -d 'Machine-readable output on stdout (one JSON document)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -s q -l quiet -d 'Only log errors'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -s v -l verbose -d 'Log more (debug level); overrides KHEISH_LOG'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand man" -s V -l version -d 'Print version'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "serve" -d 'Run the gateway daemon'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "validate" -d 'Validate a connector file and the secrets it references'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "sign" -d 'Sign a request body the way ingress verifies it'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "rotate-secret" -d 'Write a new value into a secret-store slot'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "put-external" -d 'Create or update a daemon-managed external connector'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "replay" -d 'Replay or resolve dead-lettered deliveries'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "inspect-receipts" -d 'List ingress receipts from the state root'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "drain-deliveries" -d 'Run the delivery worker in this process until the queue is drained'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "completions" -d 'Print a shell completion script'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "man" -d 'Print a man page (for packagers)'
complete -c kheishctl -n "__fish_kheishctl_using_subcommand help; and not __fish_seen_subcommand_from serve validate sign rotate-secret put-external replay inspect-receipts drain-deliveries completions man help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
