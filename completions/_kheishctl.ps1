
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'kheishctl' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'kheishctl'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'kheishctl' {
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the gateway daemon')
            [CompletionResult]::new('validate', 'validate', [CompletionResultType]::ParameterValue, 'Validate a connector file and the secrets it references')
            [CompletionResult]::new('sign', 'sign', [CompletionResultType]::ParameterValue, 'Sign a request body the way ingress verifies it')
            [CompletionResult]::new('rotate-secret', 'rotate-secret', [CompletionResultType]::ParameterValue, 'Write a new value into a secret-store slot')
            [CompletionResult]::new('put-external', 'put-external', [CompletionResultType]::ParameterValue, 'Create or update a daemon-managed external connector')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Replay or resolve dead-lettered deliveries')
            [CompletionResult]::new('inspect-receipts', 'inspect-receipts', [CompletionResultType]::ParameterValue, 'List ingress receipts from the state root')
            [CompletionResult]::new('drain-deliveries', 'drain-deliveries', [CompletionResultType]::ParameterValue, 'Run the delivery worker in this process until the queue is drained')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print a man page (for packagers)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kheishctl;serve' {
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Address to listen on (port 0 picks a free port; the readiness line names it)')
            [CompletionResult]::new('--workers', '--workers', [CompletionResultType]::ParameterName, 'Threads for the requests'' database work (the listener''s blocking pool; default: 4 × available cores). Connections and long-polls hold no thread of their own')
            [CompletionResult]::new('--max-connections', '--max-connections', [CompletionResultType]::ParameterName, 'Open connections allowed in all; past it a new connection is answered 503 overloaded and closed')
            [CompletionResult]::new('--max-connections-per-client', '--max-connections-per-client', [CompletionResultType]::ParameterName, 'Open connections allowed from one client address; past it that client''s new connections are answered 503 overloaded and closed')
            [CompletionResult]::new('--header-timeout', '--header-timeout', [CompletionResultType]::ParameterName, 'A connection must send its whole request head within this (from the connection, or from the first byte of a later request); else it is closed')
            [CompletionResult]::new('--request-timeout', '--request-timeout', [CompletionResultType]::ParameterName, 'The whole request, head and body, must arrive within this; a stalled body is answered 408 and the connection closed')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'A keep-alive connection may wait this long for its next request before it is closed')
            [CompletionResult]::new('--handler', '--handler', [CompletionResultType]::ParameterName, 'How runs are handled')
            [CompletionResult]::new('--handler-command', '--handler-command', [CompletionResultType]::ParameterName, 'With --handler exec: the program, then its arguments, one per flag (e.g. --handler-command python3 --handler-command handler.py)')
            [CompletionResult]::new('--handler-concurrency', '--handler-concurrency', [CompletionResultType]::ParameterName, 'With --handler exec or echo: runs handled at the same time')
            [CompletionResult]::new('--handler-timeout', '--handler-timeout', [CompletionResultType]::ParameterName, 'With --handler exec: a run whose command takes longer is killed and failed')
            [CompletionResult]::new('--admin-token-env', '--admin-token-env', [CompletionResultType]::ParameterName, 'Read the admin token from this environment variable')
            [CompletionResult]::new('--admin-token-file', '--admin-token-file', [CompletionResultType]::ParameterName, 'Read the admin token from this file (one trailing newline is stripped). The file is re-read when it changes, so the token rotates without a restart')
            [CompletionResult]::new('--readonly-token-env', '--readonly-token-env', [CompletionResultType]::ParameterName, 'Read a read-only control-plane token from this environment variable: accepted on GET routes only (metrics scrapers, dashboards); writes with it answer 403. Must differ from the admin token')
            [CompletionResult]::new('--readonly-token-file', '--readonly-token-file', [CompletionResultType]::ParameterName, 'Read the read-only token from this file (re-read when it changes)')
            [CompletionResult]::new('--delivery-workers', '--delivery-workers', [CompletionResultType]::ParameterName, 'Delivery worker threads sending queued output to reply targets (0 disables delivery in this daemon; `drain-deliveries` can still send)')
            [CompletionResult]::new('--receipt-retention', '--receipt-retention', [CompletionResultType]::ParameterName, 'How long submitted ingress receipts are kept')
            [CompletionResult]::new('--receipt-max-per-connector', '--receipt-max-per-connector', [CompletionResultType]::ParameterName, 'At most this many receipts are kept per connector (oldest pruned first)')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;validate' {
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--offline', '--offline', [CompletionResultType]::ParameterName, 'Skip checks that need the environment or the state root (env vars, secret slots)')
            [CompletionResult]::new('--deny-warnings', '--deny-warnings', [CompletionResultType]::ParameterName, 'Treat warnings (inline secrets, ignored secret sources) as errors')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;sign' {
            [CompletionResult]::new('--body', '--body', [CompletionResultType]::ParameterName, 'The request body to sign: a file, or - for standard input')
            [CompletionResult]::new('--connector', '--connector', [CompletionResultType]::ParameterName, 'Use this HTTP connector''s HMAC secret and its ingress path /v1/connectors/http/NAME (with --scheme slack: that Slack connector''s signing secret)')
            [CompletionResult]::new('--secret-env', '--secret-env', [CompletionResultType]::ParameterName, 'Read the secret from this environment variable')
            [CompletionResult]::new('--secret-file', '--secret-file', [CompletionResultType]::ParameterName, 'Read the secret from this file (one trailing newline is stripped)')
            [CompletionResult]::new('--secret-ref', '--secret-ref', [CompletionResultType]::ParameterName, 'Read the secret from this secret-store slot in the state root')
            [CompletionResult]::new('--path', '--path', [CompletionResultType]::ParameterName, 'The request target exactly as it will be sent (path and query), e.g. /v1/connectors/http/orders?src=a')
            [CompletionResult]::new('--url', '--url', [CompletionResultType]::ParameterName, 'The full URL; gives host (for curl) and path+query at once')
            [CompletionResult]::new('--method', '--method', [CompletionResultType]::ParameterName, 'The HTTP method that is signed')
            [CompletionResult]::new('--timestamp', '--timestamp', [CompletionResultType]::ParameterName, 'Unix timestamp in seconds to sign with (default: now)')
            [CompletionResult]::new('--scheme', '--scheme', [CompletionResultType]::ParameterName, 'The signature scheme')
            [CompletionResult]::new('--format', '--format', [CompletionResultType]::ParameterName, 'What to print')
            [CompletionResult]::new('--verify', '--verify', [CompletionResultType]::ParameterName, 'Check this signature instead of printing one: exit 0 on match, 1 on mismatch (constant time)')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--curl-fail', '--curl-fail', [CompletionResultType]::ParameterName, 'With --format curl: the command exits non-zero (22) when the answer is an HTTP error, still printing its body (curl --fail-with-body, curl 7.76 or newer)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;rotate-secret' {
            [CompletionResult]::new('--from-env', '--from-env', [CompletionResultType]::ParameterName, 'Take the new value from this environment variable')
            [CompletionResult]::new('--from-file', '--from-file', [CompletionResultType]::ParameterName, 'Take the new value from this file (one trailing newline is stripped)')
            [CompletionResult]::new('--bytes', '--bytes', [CompletionResultType]::ParameterName, 'Bytes of entropy for --generate (16..=1024)')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'Keep accepting the previous value for inbound verification for this long (e.g. 10m)')
            [CompletionResult]::new('--connector', '--connector', [CompletionResultType]::ParameterName, 'Re-bind this daemon-managed connector (KIND/NAME) to the rotated slot (needs --field)')
            [CompletionResult]::new('--field', '--field', [CompletionResultType]::ParameterName, 'The connector''s secret field to re-bind (e.g. shared_token, bearer_token, hmac_secret, bot_token, signing_secret, secret_token)')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--stdin', '--stdin', [CompletionResultType]::ParameterName, 'Take the new value from standard input (one trailing newline is stripped)')
            [CompletionResult]::new('--generate', '--generate', [CompletionResultType]::ParameterName, 'Generate a random URL-safe value and print it once on stdout')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;put-external' {
            [CompletionResult]::new('--file', '--file', [CompletionResultType]::ParameterName, 'Members from a file: TOML (one [[external_connectors]] table or a bare table) or JSON')
            [CompletionResult]::new('--platform', '--platform', [CompletionResultType]::ParameterName, 'The platform the sidecar bridges (required for a new connector; cannot change)')
            [CompletionResult]::new('--mode', '--mode', [CompletionResultType]::ParameterName, 'How the sidecar runs')
            [CompletionResult]::new('--base-url', '--base-url', [CompletionResultType]::ParameterName, 'The sidecar''s base URL (http/https; loopback for child_process)')
            [CompletionResult]::new('--allow-private-network', '--allow-private-network', [CompletionResultType]::ParameterName, 'Allow a remote_http base URL on a loopback, private or link-local address')
            [CompletionResult]::new('--shared-token-env', '--shared-token-env', [CompletionResultType]::ParameterName, 'The shared token comes from this environment variable of the daemon')
            [CompletionResult]::new('--shared-token-secret-ref', '--shared-token-secret-ref', [CompletionResultType]::ParameterName, 'The shared token comes from this secret-store slot')
            [CompletionResult]::new('--allow-unauthenticated-ingress', '--allow-unauthenticated-ingress', [CompletionResultType]::ParameterName, 'Accept sidecar ingress without a shared token (must be explicit)')
            [CompletionResult]::new('--fixed-session-id', '--fixed-session-id', [CompletionResultType]::ParameterName, 'Put every event into this session ("" clears it)')
            [CompletionResult]::new('--include-self-output', '--include-self-output', [CompletionResultType]::ParameterName, 'Also deliver output to the conversation the event came from')
            [CompletionResult]::new('--ingress-events-per-second', '--ingress-events-per-second', [CompletionResultType]::ParameterName, 'Ingress rate limit of this connector (events per second, at least 1)')
            [CompletionResult]::new('--command', '--command', [CompletionResultType]::ParameterName, 'child_process: the sidecar program')
            [CompletionResult]::new('--arg', '--arg', [CompletionResultType]::ParameterName, 'child_process: one argument of the program (repeat in order; replaces the stored list)')
            [CompletionResult]::new('--env', '--env', [CompletionResultType]::ParameterName, 'child_process: one environment variable K=V of the sidecar (repeat; replaces the stored table). Not for secrets: use --credential-slot')
            [CompletionResult]::new('--credential-slot', '--credential-slot', [CompletionResultType]::ParameterName, 'child_process: a credential the sidecar may lease, ENV_KEY=SECRET_REF (repeat; replaces the stored table). The slot must exist and be non-empty')
            [CompletionResult]::new('--working-dir', '--working-dir', [CompletionResultType]::ParameterName, 'child_process: the sidecar''s working directory ("" clears it)')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--shared-token-stdin', '--shared-token-stdin', [CompletionResultType]::ParameterName, 'Read the shared token from standard input (one trailing newline is stripped) and store it in slot connectors.external.NAME.shared_token')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Print the result and the field-by-field diff; write nothing')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;replay' {
            [CompletionResult]::new('--connector', '--connector', [CompletionResultType]::ParameterName, 'Only deliveries of runs from this connector (KIND/NAME)')
            [CompletionResult]::new('--plugin', '--plugin', [CompletionResultType]::ParameterName, 'Only deliveries to this plugin (http, slack, telegram, external)')
            [CompletionResult]::new('--session', '--session', [CompletionResultType]::ParameterName, 'Only deliveries of this session')
            [CompletionResult]::new('--run', '--run', [CompletionResultType]::ParameterName, 'Only deliveries of this run')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only dead letters since WHEN (a duration ago like 1h, or an RFC 3339 time)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most this many dead letters with --all')
            [CompletionResult]::new('--reason', '--reason', [CompletionResultType]::ParameterName, 'Why the dead letters are resolved (recorded with --resolve)')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--all', '--all', [CompletionResultType]::ParameterName, 'Select dead letters with the filters below instead of naming them')
            [CompletionResult]::new('--include-resolved', '--include-resolved', [CompletionResultType]::ParameterName, 'Also select dead letters that were already resolved')
            [CompletionResult]::new('--force', '--force', [CompletionResultType]::ParameterName, 'Replay even when a replay of the dead letter exists already')
            [CompletionResult]::new('--dry-run', '--dry-run', [CompletionResultType]::ParameterName, 'Show what would happen; change nothing')
            [CompletionResult]::new('--resolve', '--resolve', [CompletionResultType]::ParameterName, 'Mark the selected dead letters as handled instead of replaying them')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;inspect-receipts' {
            [CompletionResult]::new('--connector', '--connector', [CompletionResultType]::ParameterName, 'Only receipts of this connector (KIND/NAME, e.g. http/orders)')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'Find the receipt of this raw idempotency key / event id / update id (hashed the way ingress hashes it). With --connector it is one look-up; without, the receipts of every connector are searched for the key''s digest')
            [CompletionResult]::new('--run', '--run', [CompletionResultType]::ParameterName, 'Only the receipt of this run')
            [CompletionResult]::new('--session', '--session', [CompletionResultType]::ParameterName, 'Only receipts of this session')
            [CompletionResult]::new('--since', '--since', [CompletionResultType]::ParameterName, 'Only receipts received since WHEN (a duration ago like 1h, or an RFC 3339 time)')
            [CompletionResult]::new('--limit', '--limit', [CompletionResultType]::ParameterName, 'At most this many rows')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;drain-deliveries' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Stop after this long even if due deliveries are left (exit 3)')
            [CompletionResult]::new('--plugin', '--plugin', [CompletionResultType]::ParameterName, 'Only deliveries to this plugin')
            [CompletionResult]::new('--connector', '--connector', [CompletionResultType]::ParameterName, 'Only deliveries of runs from this connector (KIND/NAME)')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'Deliveries sent at the same time')
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--ignore-backoff', '--ignore-backoff', [CompletionResultType]::ParameterName, 'Also send deliveries whose retry time has not come yet, until nothing is pending')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;completions' {
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;man' {
            [CompletionResult]::new('--state-root', '--state-root', [CompletionResultType]::ParameterName, 'The state root directory (created 0700 when a command needs to write)')
            [CompletionResult]::new('--connectors-config', '--connectors-config', [CompletionResultType]::ParameterName, 'The TOML connector file')
            [CompletionResult]::new('--color', '--color', [CompletionResultType]::ParameterName, 'When to color human output; NO_COLOR is honoured under `auto`')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Machine-readable output on stdout (one JSON document)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Only log errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Log more (debug level); overrides KHEISH_LOG')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'kheishctl;help' {
            [CompletionResult]::new('serve', 'serve', [CompletionResultType]::ParameterValue, 'Run the gateway daemon')
            [CompletionResult]::new('validate', 'validate', [CompletionResultType]::ParameterValue, 'Validate a connector file and the secrets it references')
            [CompletionResult]::new('sign', 'sign', [CompletionResultType]::ParameterValue, 'Sign a request body the way ingress verifies it')
            [CompletionResult]::new('rotate-secret', 'rotate-secret', [CompletionResultType]::ParameterValue, 'Write a new value into a secret-store slot')
            [CompletionResult]::new('put-external', 'put-external', [CompletionResultType]::ParameterValue, 'Create or update a daemon-managed external connector')
            [CompletionResult]::new('replay', 'replay', [CompletionResultType]::ParameterValue, 'Replay or resolve dead-lettered deliveries')
            [CompletionResult]::new('inspect-receipts', 'inspect-receipts', [CompletionResultType]::ParameterValue, 'List ingress receipts from the state root')
            [CompletionResult]::new('drain-deliveries', 'drain-deliveries', [CompletionResultType]::ParameterValue, 'Run the delivery worker in this process until the queue is drained')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script')
            [CompletionResult]::new('man', 'man', [CompletionResultType]::ParameterValue, 'Print a man page (for packagers)')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'kheishctl;help;serve' {
            break
        }
        'kheishctl;help;validate' {
            break
        }
        'kheishctl;help;sign' {
            break
        }
        'kheishctl;help;rotate-secret' {
            break
        }
        'kheishctl;help;put-external' {
            break
        }
        'kheishctl;help;replay' {
            break
        }
        'kheishctl;help;inspect-receipts' {
            break
        }
        'kheishctl;help;drain-deliveries' {
            break
        }
        'kheishctl;help;completions' {
            break
        }
        'kheishctl;help;man' {
            break
        }
        'kheishctl;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
