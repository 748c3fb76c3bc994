//! `ferry` without a subcommand: the agent for one site.

use anyhow::{Context as _, Result};

use super::exit::{coded, Exit};
use super::Cli;
use crate::catalog::CatalogUri;
use crate::config::{self, LoadOptions};

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

/// The catalogue named on the command line or in the environment: `--catalog`, else
/// `$FERRY_CATALOG`. (The variable is read here rather than through clap so `--help` never
/// shows its value.) `None`: use the site map's, else the embedded default.
fn catalog_flag_or_env(flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| std::env::var("FERRY_CATALOG").ok())
        .filter(|s| !s.trim().is_empty())
}

/// Loads the site map with the host-local checks for `site`. Every problem is printed; a
/// bad site map is a usage error and nothing runs.
fn load_site_map(cli: &Cli, site: &str) -> Result<config::Loaded> {
    let Some(path) = &cli.config else {
        return Err(coded(
            Exit::Usage,
            "no site map: pass --config FILE or set FERRY_CONFIG",
        ));
    };
    let opts = LoadOptions {
        host: Some(site.to_string()),
        ssh_config: None,
    };
    match config::load(path, &opts) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("{warning}");
            }
            Ok(loaded)
        }
        Err(err) => Err(coded(Exit::Usage, err.to_string())),
    }
}

pub(super) fn run(cli: &Cli) -> Result<Exit> {
    let site = site_identity(cli.host.as_deref())?;
    // A bad catalogue flag is reported before the site map is even read.
    let flagged = catalog_flag_or_env(cli.catalog.as_deref())
        .map(|uri| CatalogUri::parse(&uri))
        .transpose()?;
    let loaded = load_site_map(cli, &site)?;
    let catalog = match (flagged, &loaded.map.catalog) {
        (Some(uri), _) => uri,
        (None, Some(settings)) => CatalogUri::parse(&settings.uri)?,
        (None, None) => CatalogUri::default_embedded(),
    };
    tracing::info!(%site, %catalog, once = cli.once, "ferry agent starting");
    Err(coded(
        Exit::Unsupported,
        format!(
            "site {site}: the agent's tasks (register, verify, copy, purge) are not built in \
             this version yet; nothing was done"
        ),
    ))
}
