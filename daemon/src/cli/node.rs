//! Commands that work on a node through its config file rather than its
//! local API: run it (`serve`), check the config, give a restored store a
//! new epoch, and verify or show the audit log straight from the store.
#![allow(clippy::print_stdout)]

use std::path::Path;

use super::{AuditCommand, environment};
use crate::config::{ConfigError, NodeConfig};

/// Runs the node configured in `config` until SIGINT or SIGTERM. A bad
/// config, or a file it names that is missing or wrong, stops it before
/// anything starts, with every problem found.
pub(super) async fn serve(config: &Path) -> anyhow::Result<()> {
    let path = config;
    let config = NodeConfig::load(path, &environment())?;
    let issues = crate::app::check_files(&config);
    if !issues.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            issues,
        }
        .into());
    }
    let node = crate::App::start(config).await?;
    let cancel = node.cancel_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    node.wait().await
}

/// `tiersync check-config`: validates the file, reporting every problem at
/// once; with `files`, also checks every file it names.
pub(super) fn check_config(config: &Path, files: bool) -> anyhow::Result<()> {
    let c = NodeConfig::load(config, &environment())?;
    if files {
        let issues = crate::app::check_files(&c);
        if !issues.is_empty() {
            return Err(ConfigError::Invalid {
                path: config.to_owned(),
                issues,
            }
            .into());
        }
    }
    println!(
        "{}: ok ({} node `{}`{}, store {}{})",
        config.display(),
        c.tier(),
        c.code,
        c.parent
            .as_ref()
            .map(|p| format!(", parent `{}` at {}", p.code, p.addresses.join(" or ")))
            .unwrap_or_default(),
        c.storage,
        if files {
            "; every file it names is readable and holds what it should"
        } else {
            "; the files it names were not opened (--files checks them)"
        }
    );
    Ok(())
}

/// `tiersync new-epoch`: gives a restored store a new epoch.
pub(super) async fn new_epoch(config: &Path) -> anyhow::Result<()> {
    let c = NodeConfig::load(config, &environment())?;
    let epoch = crate::app::new_epoch(&c).await?;
    println!(
        "{}: node `{}` store {} has the new epoch {epoch}; its peers will resend from the start",
        config.display(),
        c.code,
        c.storage
    );
    Ok(())
}

/// `tiersync audit`: verifies or shows the audit log, read from the store.
pub(super) async fn audit(command: AuditCommand) -> anyhow::Result<()> {
    use crate::store::audit::{AuditQuery, Verdict};
    match command {
        AuditCommand::Verify { config } => {
            let c = NodeConfig::load(&config, &environment())?;
            let log = crate::app::open_audit_log(&c).await?;
            match crate::store::audit::verify(&*log).await? {
                Verdict::Intact { entries, head } => {
                    println!(
                        "{}: audit log of node `{}` ok: {entries} entries, head {}",
                        config.display(),
                        c.code,
                        hex::encode(head)
                    );
                    Ok(())
                }
                Verdict::Broken(broken) => anyhow::bail!(
                    "{}: audit log of node `{}` is broken: {broken}",
                    config.display(),
                    c.code
                ),
            }
        }
        AuditCommand::Show {
            config,
            since_ms,
            until_ms,
            kind,
            actor,
            action,
            after,
            limit,
        } => {
            let c = NodeConfig::load(&config, &environment())?;
            let log = crate::app::open_audit_log(&c).await?;
            let query = AuditQuery {
                after,
                since_ms,
                until_ms,
                kind,
                actor,
                action,
                limit,
            };
            for entry in log.audit_list(&query).await? {
                println!("{entry}");
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
