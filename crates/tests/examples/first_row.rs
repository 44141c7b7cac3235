//! `first_row CONNINFO [--retry]`: the time from this program's start to the first row of
//! `select 1` over a new connection (tokio-postgres, no TLS), printed in milliseconds.
//! `bench/coldstart.sh` runs it right after a suspend, so the time covers the proxy's
//! wake of the compute, and, with `--retry`, right after starting a local Postgres (each
//! refused connection is tried again a millisecond later). The password comes from
//! `PGPASSWORD` when the connection string has none. A separate process per measure, so
//! nothing is shared between cycles; only the process's own start is left out.

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let started = Instant::now();
    let mut args = std::env::args().skip(1);
    let Some(conninfo) = args.next() else {
        eprintln!("usage: first_row CONNINFO [--retry]");
        std::process::exit(2);
    };
    let retry = args.next().as_deref() == Some("--retry");
    let mut config: tokio_postgres::Config = match conninfo.parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("first_row: {e}");
            std::process::exit(2);
        }
    };
    if config.get_password().is_none()
        && let Ok(pw) = std::env::var("PGPASSWORD")
    {
        config.password(pw);
    }
    let give_up = started + Duration::from_secs(30);
    loop {
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                match client.simple_query("select 1").await {
                    Ok(_) => {
                        println!("{:.1}", started.elapsed().as_secs_f64() * 1000.0);
                        return;
                    }
                    Err(e) => {
                        eprintln!("first_row: select 1: {e}");
                        std::process::exit(1);
                    }
                }
            }
            Err(e) if retry && Instant::now() < give_up => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => {
                eprintln!("first_row: {e}");
                std::process::exit(1);
            }
        }
    }
}
