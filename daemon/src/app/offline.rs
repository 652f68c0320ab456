//! What the command line does with a node's config without running it:
//! load and check its material (`check-config`, and every start), give a
//! restored store a new epoch, open its audit log read-only.

use anyhow::Context;
use prost::Message;
use tiersync_proto::types::DigestKey;

use crate::config::{NodeConfig, Storage};
use crate::identity::origin::{Identity, TrustRoot};
use crate::identity::tls::TlsMaterial;
use crate::store::Store;
use crate::store::postgres::{ActiveLease, PgStore, connect_options};
use crate::store::sqlite::SqliteStore;

/// Gives the store of a stopped node a new epoch (after a restore from
/// backup) and returns it. On PostgreSQL it takes the node's lease for the
/// duration, so it refuses while a daemon of the node is active.
pub async fn new_epoch(config: &NodeConfig) -> anyhow::Result<String> {
    match &config.storage {
        Storage::Sqlite(path) => {
            if !path.is_file() {
                anyhow::bail!(
                    "there is no store at {}; new-epoch renews an existing store",
                    path.display()
                );
            }
            let store = SqliteStore::open(path, &config.code)
                .await
                .with_context(|| format!("cannot open store {}", path.display()))?;
            let epoch = store.renew_epoch().await;
            store.close().await;
            Ok(epoch?)
        }
        Storage::Postgres(url) => {
            let options = connect_options(url)?;
            let Some(lease) = ActiveLease::try_acquire(options.clone(), &config.code).await? else {
                anyhow::bail!(
                    "a daemon of node `{}` holds the active lease in {}; stop it (and its standby) before giving the store a new epoch",
                    config.code,
                    config.storage
                );
            };
            if !PgStore::exists(&options).await? {
                anyhow::bail!(
                    "there is no store in {}; new-epoch renews an existing store",
                    config.storage
                );
            }
            let store = PgStore::open(options, &config.code)
                .await
                .with_context(|| format!("cannot open store {}", config.storage))?;
            let epoch = store.renew_epoch().await;
            store.close().await;
            drop(lease);
            Ok(epoch?)
        }
    }
}

/// A read-only view of a node's audit log for `tiersync audit`: it works
/// while the daemon runs (SQLite in WAL mode; on PostgreSQL a plain
/// session, without the fencing bump that opening the store would make).
pub async fn open_audit_log(
    config: &NodeConfig,
) -> anyhow::Result<Box<dyn crate::store::AuditSource>> {
    match &config.storage {
        Storage::Sqlite(path) => {
            if !path.is_file() {
                anyhow::bail!("there is no store at {}", path.display());
            }
            let pool = crate::store::sqlite::open_read_only(path)
                .await
                .with_context(|| format!("cannot open store {}", path.display()))?;
            Ok(Box::new(pool))
        }
        Storage::Postgres(url) => {
            let options = connect_options(url)?;
            if !PgStore::exists(&options).await? {
                anyhow::bail!("there is no store in {}", config.storage);
            }
            let pool = crate::store::postgres::open_reader(options)
                .await
                .with_context(|| format!("cannot open store {}", config.storage))?;
            Ok(Box::new(pool))
        }
    }
}

/// Loads and checks the files a node's config points at: its TLS material
/// (the certificate must be for this node's code and chain to the CA) and
/// the deployment secret. `check-config` runs this too, so `ExecStartPre`
/// catches what `serve` would fail on.
pub fn load_material(config: &NodeConfig) -> anyhow::Result<Material> {
    crate::identity::tls::install_crypto_provider();
    let tls = TlsMaterial::load(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
    if tls.own_code() != &config.code {
        anyhow::bail!(
            "the certificate {} is for node `{}`, but node.code is `{}`; issue one for `{}` with `tiersync pki issue --code {}`",
            config.tls.cert.display(),
            tls.own_code(),
            config.code,
            config.code,
            config.code
        );
    }
    let key_hex = std::fs::read_to_string(&config.digest_key_file).with_context(|| {
        format!(
            "cannot read deployment.digest_key_file {}",
            config.digest_key_file.display()
        )
    })?;
    let digest_key = DigestKey::from_hex(key_hex.trim()).with_context(|| {
        format!(
            "deployment.digest_key_file {}",
            config.digest_key_file.display()
        )
    })?;
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {key} {}", path.display()))
    };
    let root_what = config.trust.root.display().to_string();
    let root = TrustRoot::from_pem(&read("trust.root", &config.trust.root)?, &root_what)
        .with_context(|| format!("trust.root {root_what}"))?;
    let later = match &config.trust.chain {
        None => Vec::new(),
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read trust.chain {}", path.display()))?;
            let chain = tiersync_proto::wire::RootChain::decode(bytes.as_slice())
                .with_context(|| format!("trust.chain {} is not a root chain", path.display()))?;
            crate::identity::keyring::follow_chain(&root, &chain.links)
                .map_err(|reason| anyhow::anyhow!("trust.chain {}: {reason}", path.display()))?
        }
    };
    let identity = Identity::load(
        &root,
        &later,
        &config.code,
        &read("trust.key", &config.trust.key)?,
        &read("trust.cert", &config.trust.cert)?,
        &format!(
            "trust.key {} / trust.cert {}",
            config.trust.key.display(),
            config.trust.cert.display()
        ),
    )?;
    Ok(Material {
        tls,
        digest_key,
        root,
        identity,
    })
}

/// What a node's config points at, loaded and checked.
pub struct Material {
    pub tls: TlsMaterial,
    pub digest_key: DigestKey,
    pub root: TrustRoot,
    pub identity: Identity,
}
