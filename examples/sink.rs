//! A local webhook sink for trying delivery by hand: prints every request it receives
//! (method, path, `Idempotency-Key`, body) and answers 200 — or 410 Gone with `--reject`, which
//! the gateway treats as a terminal failure, so the delivery is dead-lettered at once.
//!
//! ```sh
//! cargo run --example sink -- 127.0.0.1:4001            # accept
//! cargo run --example sink -- 127.0.0.1:4001 --reject   # refuse everything (410)
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Read;

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:4001".to_string());
    let reject = args.any(|a| a == "--reject");
    let server = match tiny_http::Server::http(&addr) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!(
        "sink listening on http://{addr} ({})",
        if reject {
            "answering 410 Gone"
        } else {
            "answering 200"
        }
    );
    for mut rq in server.incoming_requests() {
        let mut body = String::new();
        let _ = rq.as_reader().take(1 << 20).read_to_string(&mut body);
        let key = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Idempotency-Key"))
            .map(|h| h.value.to_string())
            .unwrap_or_default();
        println!(
            "{} {} idempotency-key={key}\n  {body}",
            rq.method(),
            rq.url()
        );
        let status = if reject { 410 } else { 200 };
        let _ = rq.respond(tiny_http::Response::from_string("{}").with_status_code(status));
    }
    std::process::ExitCode::SUCCESS
}
