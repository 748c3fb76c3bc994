//! `ferry serve`: the read-only web view of the catalogue ([`crate::serve`]).
//!
//! The catalogue is chosen as for `ferry runs` (`--catalog`, `FERRY_CATALOG`, the site map's
//! when `--config` names one) and opened for reading only. Exit codes: 2 for bad input (a
//! users file that cannot be used, an address that cannot be listened on, an embedded
//! catalogue that does not exist), 3 for a catalogue that cannot be reached, 0 after
//! SIGTERM or SIGINT.

use anyhow::{Context, Result};

use super::args::ServeArgs;
use super::exit::{coded, Exit};
use super::Cli;
use crate::catalog::{self, CatalogUri};
use crate::serve::{self, auth::Users, AppState, Options};

pub(super) fn run(cli: &Cli, args: &ServeArgs) -> Result<Exit> {
    let loaded = match &cli.config {
        Some(_) => Some(super::agent::load_shared_site_map(cli)?),
        None => None,
    };
    let target = super::agent::catalog_target(cli, loaded.as_ref())?;
    let users = args
        .users
        .as_deref()
        .map(Users::read)
        .transpose()
        .map_err(|e| coded(Exit::Usage, e.to_string()))?;
    if let CatalogUri::Embedded { path } = &target.uri {
        if !super::runs::embedded_exists(&target.uri, path)? {
            return Err(coded(
                Exit::Usage,
                format!(
                    "no catalogue at {}: nothing to show (an agent creates it on its first cycle)",
                    path.display()
                ),
            ));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let scrubbed =
        |e: anyhow::Error| coded(super::exit::classify(&e), target.scrub(&format!("{e:#}")));
    runtime
        .block_on(async {
            let shutdown = crate::daemon::shutdown_signal()
                .context("cannot install the SIGTERM/SIGINT handlers")?;
            let catalog = catalog::open_target_for_reading(&target).await?;
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| coded(Exit::Usage, format!("--listen {}: {e}", args.listen)))?;
            let addr = listener.local_addr().context("reading the bound address")?;
            if !addr.ip().is_loopback() && users.is_none() {
                tracing::warn!(
                    "listening on {addr}, not loopback, without --users: anyone who reaches \
                     the port can read the catalogue"
                );
            }
            let options = Options {
                silent_after: args.silent_after,
                page_size: args.page_size,
                users,
            };
            let state = AppState::new(catalog, Some(target.clone()), options);
            eprintln!("ferry serve: listening on http://{addr}/ (catalogue {target})");
            tracing::info!(%addr, catalogue = %target, "ferry serve listening");
            serve::serve(listener, serve::router(state), shutdown)
                .await
                .context("serving")?;
            anyhow::Ok(())
        })
        .map_err(scrubbed)?;
    Ok(Exit::Ok)
}
