//! `ferry` without a subcommand: the agent for one site.

use anyhow::{Context as _, Result};

use super::exit::{coded, Exit};
use super::Cli;
use crate::catalog::CatalogUri;

/// The site this agent runs as: `--host`, else `$FERRY_SITE`, else the short host name
/// (as cax did).
pub(super) fn site_identity(flag: Option<&str>) -> Result<String> {
    if let Some(site) = flag {
        return Ok(site.to_string());
    }
    if let Ok(site) = std::env::var("FERRY_SITE") {
        if !site.trim().is_empty() {
            return Ok(site.trim().to_string());
        }
    }
    let host = gethostname::gethostname();
    let host = host
        .to_str()
        .context("the host name is not valid UTF-8: pass --host SITE or set FERRY_SITE")?;
    let short = host.split('.').next().unwrap_or(host);
    if short.is_empty() {
        return Err(coded(
            Exit::Usage,
            "cannot tell which site this is: pass --host SITE or set FERRY_SITE",
        ));
    }
    Ok(short.to_string())
}

/// The catalogue: `--catalog`, else `$FERRY_CATALOG`, else the embedded default.
/// (`FERRY_CATALOG` is read here rather than through clap so `--help` never shows it.)
pub(super) fn catalog_uri(flag: Option<&str>) -> Result<CatalogUri> {
    let from_env = std::env::var("FERRY_CATALOG").ok();
    match flag.or(from_env.as_deref()) {
        Some(uri) => Ok(CatalogUri::parse(uri)?),
        None => Ok(CatalogUri::default_embedded()),
    }
}

pub(super) fn run(cli: &Cli) -> Result<Exit> {
    let site = site_identity(cli.host.as_deref())?;
    let catalog = catalog_uri(cli.catalog.as_deref())?;
    tracing::info!(%site, %catalog, once = cli.once, "ferry agent starting");
    Err(coded(
        Exit::Unsupported,
        format!(
            "site {site}: the agent's tasks (register, verify, copy, purge) are not built in \
             this version yet; nothing was done"
        ),
    ))
}
