
use builtin;
use str;

set edit:completion:arg-completer[kheishctl] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'kheishctl'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'kheishctl'= {
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand serve 'Run the gateway daemon'
            cand validate 'Validate a connector file and the secrets it references'
            cand sign 'Sign a request body the way ingress verifies it'
            cand rotate-secret 'Write a new value into a secret-store slot'
            cand put-external 'Create or update a daemon-managed external connector'
            cand replay 'Replay or resolve dead-lettered deliveries'
            cand inspect-receipts 'List ingress receipts from the state root'
            cand drain-deliveries 'Run the delivery worker in this process until the queue is drained'
            cand completions 'Print a shell completion script'
            cand man 'Print a man page (for packagers)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'kheishctl;serve'= {
            cand --listen 'Address to listen on (port 0 picks a free port; the readiness line names it)'
            cand --workers 'Threads for the requests'' database work (the listener''s blocking pool; default: 4 × available cores). Connections and long-polls hold no thread of their own'
            cand --max-connections 'Open connections allowed in all; past it a new connection is answered 503 overloaded and closed'
            cand --max-connections-per-client 'Open connections allowed from one client address; past it that client''s new connections are answered 503 overloaded and closed'
            cand --header-timeout 'A connection must send its whole request head within this (from the connection, or from the first byte of a later request); else it is closed'
            cand --request-timeout 'The whole request, head and body, must arrive within this; a stalled body is answered 408 and the connection closed'
            cand --idle-timeout 'A keep-alive connection may wait this long for its next request before it is closed'
            cand --handler 'How runs are handled'
            cand --handler-command 'With --handler exec: the program, then its arguments, one per flag (e.g. --handler-command python3 --handler-command handler.py)'
            cand --handler-concurrency 'With --handler exec or echo: runs handled at the same time'
            cand --handler-timeout 'With --handler exec: a run whose command takes longer is killed and failed'
            cand --admin-token-env 'Read the admin token from this environment variable'
            cand --admin-token-file 'Read the admin token from this file (one trailing newline is stripped). The file is re-read when it changes, so the token rotates without a restart'
            cand --readonly-token-env 'Read a read-only control-plane token from this environment variable: accepted on GET routes only (metrics scrapers, dashboards); writes with it answer 403. Must differ from the admin token'
            cand --readonly-token-file 'Read the read-only token from this file (re-read when it changes)'
            cand --delivery-workers 'Delivery worker threads sending queued output to reply targets (0 disables delivery in this daemon; `drain-deliveries` can still send)'
            cand --receipt-retention 'How long submitted ingress receipts are kept'
            cand --receipt-max-per-connector 'At most this many receipts are kept per connector (oldest pruned first)'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;validate'= {
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --offline 'Skip checks that need the environment or the state root (env vars, secret slots)'
            cand --deny-warnings 'Treat warnings (inline secrets, ignored secret sources) as errors'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;sign'= {
            cand --body 'The request body to sign: a file, or - for standard input'
            cand --connector 'Use this HTTP connector''s HMAC secret and its ingress path /v1/connectors/http/NAME (with --scheme slack: that Slack connector''s signing secret)'
            cand --secret-env 'Read the secret from this environment variable'
            cand --secret-file 'Read the secret from this file (one trailing newline is stripped)'
            cand --secret-ref 'Read the secret from this secret-store slot in the state root'
            cand --path 'The request target exactly as it will be sent (path and query), e.g. /v1/connectors/http/orders?src=a'
            cand --url 'The full URL; gives host (for curl) and path+query at once'
            cand --method 'The HTTP method that is signed'
            cand --timestamp 'Unix timestamp in seconds to sign with (default: now)'
            cand --scheme 'The signature scheme'
            cand --format 'What to print'
            cand --verify 'Check this signature instead of printing one: exit 0 on match, 1 on mismatch (constant time)'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --curl-fail 'With --format curl: the command exits non-zero (22) when the answer is an HTTP error, still printing its body (curl --fail-with-body, curl 7.76 or newer)'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;rotate-secret'= {
            cand --from-env 'Take the new value from this environment variable'
            cand --from-file 'Take the new value from this file (one trailing newline is stripped)'
            cand --bytes 'Bytes of entropy for --generate (16..=1024)'
            cand --grace 'Keep accepting the previous value for inbound verification for this long (e.g. 10m)'
            cand --connector 'Re-bind this daemon-managed connector (KIND/NAME) to the rotated slot (needs --field)'
            cand --field 'The connector''s secret field to re-bind (e.g. shared_token, bearer_token, hmac_secret, bot_token, signing_secret, secret_token)'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --stdin 'Take the new value from standard input (one trailing newline is stripped)'
            cand --generate 'Generate a random URL-safe value and print it once on stdout'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;put-external'= {
            cand --file 'Members from a file: TOML (one [[external_connectors]] table or a bare table) or JSON'
            cand --platform 'The platform the sidecar bridges (required for a new connector; cannot change)'
            cand --mode 'How the sidecar runs'
            cand --base-url 'The sidecar''s base URL (http/https; loopback for child_process)'
            cand --allow-private-network 'Allow a remote_http base URL on a loopback, private or link-local address'
            cand --shared-token-env 'The shared token comes from this environment variable of the daemon'
            cand --shared-token-secret-ref 'The shared token comes from this secret-store slot'
            cand --allow-unauthenticated-ingress 'Accept sidecar ingress without a shared token (must be explicit)'
            cand --fixed-session-id 'Put every event into this session ("" clears it)'
            cand --include-self-output 'Also deliver output to the conversation the event came from'
            cand --ingress-events-per-second 'Ingress rate limit of this connector (events per second, at least 1)'
            cand --command 'child_process: the sidecar program'
            cand --arg 'child_process: one argument of the program (repeat in order; replaces the stored list)'
            cand --env 'child_process: one environment variable K=V of the sidecar (repeat; replaces the stored table). Not for secrets: use --credential-slot'
            cand --credential-slot 'child_process: a credential the sidecar may lease, ENV_KEY=SECRET_REF (repeat; replaces the stored table). The slot must exist and be non-empty'
            cand --working-dir 'child_process: the sidecar''s working directory ("" clears it)'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --shared-token-stdin 'Read the shared token from standard input (one trailing newline is stripped) and store it in slot connectors.external.NAME.shared_token'
            cand --dry-run 'Print the result and the field-by-field diff; write nothing'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;replay'= {
            cand --connector 'Only deliveries of runs from this connector (KIND/NAME)'
            cand --plugin 'Only deliveries to this plugin (http, slack, telegram, external)'
            cand --session 'Only deliveries of this session'
            cand --run 'Only deliveries of this run'
            cand --since 'Only dead letters since WHEN (a duration ago like 1h, or an RFC 3339 time)'
            cand --limit 'At most this many dead letters with --all'
            cand --reason 'Why the dead letters are resolved (recorded with --resolve)'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --all 'Select dead letters with the filters below instead of naming them'
            cand --include-resolved 'Also select dead letters that were already resolved'
            cand --force 'Replay even when a replay of the dead letter exists already'
            cand --dry-run 'Show what would happen; change nothing'
            cand --resolve 'Mark the selected dead letters as handled instead of replaying them'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;inspect-receipts'= {
            cand --connector 'Only receipts of this connector (KIND/NAME, e.g. http/orders)'
            cand --key 'Find the receipt of this raw idempotency key / event id / update id (hashed the way ingress hashes it). With --connector it is one look-up; without, the receipts of every connector are searched for the key''s digest'
            cand --run 'Only the receipt of this run'
            cand --session 'Only receipts of this session'
            cand --since 'Only receipts received since WHEN (a duration ago like 1h, or an RFC 3339 time)'
            cand --limit 'At most this many rows'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;drain-deliveries'= {
            cand --timeout 'Stop after this long even if due deliveries are left (exit 3)'
            cand --plugin 'Only deliveries to this plugin'
            cand --connector 'Only deliveries of runs from this connector (KIND/NAME)'
            cand --concurrency 'Deliveries sent at the same time'
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --ignore-backoff 'Also send deliveries whose retry time has not come yet, until nothing is pending'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;completions'= {
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;man'= {
            cand --state-root 'The state root directory (created 0700 when a command needs to write)'
            cand --connectors-config 'The TOML connector file'
            cand --color 'When to color human output; NO_COLOR is honoured under `auto`'
            cand --json 'Machine-readable output on stdout (one JSON document)'
            cand -q 'Only log errors'
            cand --quiet 'Only log errors'
            cand -v 'Log more (debug level); overrides KHEISH_LOG'
            cand --verbose 'Log more (debug level); overrides KHEISH_LOG'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'kheishctl;help'= {
            cand serve 'Run the gateway daemon'
            cand validate 'Validate a connector file and the secrets it references'
            cand sign 'Sign a request body the way ingress verifies it'
            cand rotate-secret 'Write a new value into a secret-store slot'
            cand put-external 'Create or update a daemon-managed external connector'
            cand replay 'Replay or resolve dead-lettered deliveries'
            cand inspect-receipts 'List ingress receipts from the state root'
            cand drain-deliveries 'Run the delivery worker in this process until the queue is drained'
            cand completions 'Print a shell completion script'
            cand man 'Print a man page (for packagers)'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'kheishctl;help;serve'= {
        }
        &'kheishctl;help;validate'= {
        }
        &'kheishctl;help;sign'= {
        }
        &'kheishctl;help;rotate-secret'= {
        }
        &'kheishctl;help;put-external'= {
        }
        &'kheishctl;help;replay'= {
        }
        &'kheishctl;help;inspect-receipts'= {
        }
        &'kheishctl;help;drain-deliveries'= {
        }
        &'kheishctl;help;completions'= {
        }
        &'kheishctl;help;man'= {
        }
        &'kheishctl;help;help'= {
        }
    ]
    $completions[$command]
}
