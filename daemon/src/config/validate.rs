//! Turning a [`RawConfig`] into a validated [`NodeConfig`]: every field is
//! checked and every problem collected with its key path, relative paths
//! resolve against the file's directory, and only the city may hold the
//! deployment's root keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tiersync_proto::types::{DivisionCode, Tier};

use super::raw::{RawConfig, RawNode};
use super::{
    CONFIG_VERSION, ConfigIssue, NodeConfig, ParentConfig, Storage, SyncTuning, TlsPaths,
    TrustPaths,
};

impl RawConfig {
    /// Checks every field; returns all problems, not just the first.
    pub fn validate(self, base: &Path) -> Result<NodeConfig, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut issue = |key: &str, problem: String| issues.push(ConfigIssue::new(key, problem));

        match self.version {
            Some(CONFIG_VERSION) => {}
            Some(v) => issue(
                "version",
                format!("version {v} is not supported; this build reads version {CONFIG_VERSION}"),
            ),
            None => issue(
                "version",
                format!("missing; add `version = {CONFIG_VERSION}` at the top"),
            ),
        }

        let node = self.node.unwrap_or(RawNode {
            code: None,
            tier: None,
            name: None,
        });
        let code = match node.code.as_deref() {
            None => {
                issue(
                    "node.code",
                    "missing; set the node's statistical division code, e.g. `511102004001`".into(),
                );
                None
            }
            Some(code) => match DivisionCode::parse(code) {
                Ok(c) => Some(c),
                Err(e) => {
                    issue("node.code", e.to_string());
                    None
                }
            },
        };
        if let Some(tier) = node.tier.as_deref() {
            match tier.parse::<Tier>() {
                Err(e) => issue("node.tier", e.to_string()),
                Ok(tier) => {
                    if let Some(c) = &code
                        && c.tier() != tier
                    {
                        issue(
                            "node.tier",
                            format!(
                                "`{tier}` does not match node.code `{c}`, which has {} digits and so is a {} node; a {tier} code has {} digits",
                                c.as_str().len(),
                                c.tier(),
                                tier.code_len()
                            ),
                        );
                    }
                }
            }
        }

        let raw_storage = self.storage.unwrap_or_default();
        let lease = {
            let defaults = crate::store::postgres::LeaseTiming::default();
            let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
            let lease = crate::store::postgres::LeaseTiming {
                renew: ms(raw_storage.lease_renew_ms, defaults.renew),
                expiry: ms(raw_storage.lease_expiry_ms, defaults.expiry),
            };
            if lease.renew.is_zero() {
                issue("storage.lease_renew_ms", "must be greater than 0".into());
            } else if lease.expiry < lease.renew * 2 {
                issue(
                    "storage.lease_expiry_ms",
                    format!(
                        "{} ms is less than twice storage.lease_renew_ms ({} ms); renew well inside the expiry, e.g. every second with a 10 s expiry",
                        lease.expiry.as_millis(),
                        lease.renew.as_millis()
                    ),
                );
            }
            lease
        };
        let storage = match raw_storage.path {
            None => {
                issue(
                    "storage.path",
                    "missing; set the SQLite file, e.g. `/var/lib/tiersync/node.db`, or a PostgreSQL URL, e.g. `postgres://tiersync@db.example:5432/tiersync`".into(),
                );
                None
            }
            Some(p) if crate::store::postgres::is_postgres_url(&p) => {
                match crate::store::postgres::connect_options(&p) {
                    Ok(_) => Some(Storage::Postgres(p)),
                    Err(e) => {
                        issue("storage.path", e.to_string());
                        None
                    }
                }
            }
            Some(p) => {
                let p = p.strip_prefix("sqlite://").unwrap_or(&p).to_owned();
                Some(Storage::Sqlite(resolve(base, Path::new(&p))))
            }
        };

        let mut addr = |key: &str, value: Option<String>| -> Option<SocketAddr> {
            let value = value?;
            match value.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    issue(
                        key,
                        format!("`{value}` is not an IP:port address, e.g. `0.0.0.0:7400`"),
                    );
                    None
                }
            }
        };
        // A peer address given but unusable is reported as such, not also
        // as missing.
        let peer_given = self.listen.peer.is_some();
        let listen_peer = addr("listen.peer", self.listen.peer);
        let listen_api = addr("listen.api", self.listen.api);
        let listen_adapter = addr("listen.adapter", self.listen.adapter);
        let listen_admin = addr("listen.admin", self.listen.admin);

        if let Some(code) = &code {
            match (code.tier(), listen_peer) {
                (Tier::Community, Some(addr)) => issue(
                    "listen.peer",
                    format!(
                        "`{addr}`: node `{code}` is a community and has no children to listen for; remove listen.peer"
                    ),
                ),
                (tier, None) if tier != Tier::Community && !peer_given => issue(
                    "listen.peer",
                    format!("missing; a {tier} node listens for its children, e.g. `0.0.0.0:7400`"),
                ),
                _ => {}
            }
        }

        let parent = match (&code, self.parent) {
            (Some(code), parent) => {
                let expected = code.parent();
                match (expected, parent) {
                    (None, None) => None,
                    (None, Some(_)) => {
                        issue(
                            "parent",
                            format!(
                                "node `{code}` is a city, the root of a deployment, and has no parent; remove the [parent] table"
                            ),
                        );
                        None
                    }
                    (Some(expected), None) => {
                        issue(
                            "parent",
                            format!(
                                "missing; node `{code}` is a {} and must dial its parent `{expected}`: add [parent] with code = \"{expected}\" and address = \"HOST:PORT\"",
                                code.tier()
                            ),
                        );
                        None
                    }
                    (Some(expected), Some(p)) => {
                        let pcode = match p.code.as_deref() {
                            None => {
                                issue("parent.code", format!("missing; it must be `{expected}`"));
                                None
                            }
                            Some(pc) => match DivisionCode::parse(pc) {
                                Err(e) => {
                                    issue("parent.code", e.to_string());
                                    None
                                }
                                Ok(pc) if pc != expected => {
                                    issue(
                                        "parent.code",
                                        format!(
                                            "`{pc}` does not own node `{code}`; the parent of `{code}` is `{expected}` (its first {} digits)",
                                            expected.as_str().len()
                                        ),
                                    );
                                    None
                                }
                                Ok(pc) => Some(pc),
                            },
                        };
                        let given: Vec<(&str, String)> = match (p.address, p.addresses) {
                            (Some(_), Some(_)) => {
                                issue(
                                    "parent.addresses",
                                    "set either parent.address or parent.addresses, not both"
                                        .into(),
                                );
                                vec![]
                            }
                            (Some(a), None) => vec![("parent.address", a)],
                            (None, Some(list)) if list.is_empty() => {
                                issue(
                                    "parent.addresses",
                                    "empty; list the parent's peer addresses HOST:PORT".into(),
                                );
                                vec![]
                            }
                            (None, Some(list)) => {
                                list.into_iter().map(|a| ("parent.addresses", a)).collect()
                            }
                            (None, None) => {
                                issue(
                                    "parent.address",
                                    "missing; set the parent's peer address HOST:PORT (or parent.addresses for an active daemon and its standby)".into(),
                                );
                                vec![]
                            }
                        };
                        let mut addresses = Vec::with_capacity(given.len());
                        for (key, a) in given {
                            let bare = a.strip_prefix("https://").unwrap_or(&a);
                            if bare
                                .rsplit_once(':')
                                .and_then(|(_, port)| port.parse::<u16>().ok())
                                .is_none()
                            {
                                issue(
                                    key,
                                    format!("`{a}` is not HOST:PORT, e.g. `street.example:7400`"),
                                );
                            } else {
                                addresses.push(bare.to_owned());
                            }
                        }
                        let address = (!addresses.is_empty()).then_some(addresses);
                        match (pcode, address) {
                            (Some(code), Some(addresses)) => Some(ParentConfig { code, addresses }),
                            _ => None,
                        }
                    }
                }
            }
            (None, _) => None,
        };

        let tls = match self.tls {
            None => {
                issue(
                    "tls",
                    "missing; add [tls] with ca, cert and key (make them with `tiersync pki`)"
                        .into(),
                );
                None
            }
            Some(t) => section_paths(
                base,
                code.as_ref(),
                "tls",
                [("ca", t.ca), ("cert", t.cert), ("key", t.key)],
                ("ca_key", t.ca_key, "the deployment CA key"),
                &mut issue,
            )
            .map(|([ca, cert, key], ca_key)| TlsPaths {
                ca,
                cert,
                key,
                ca_key,
            }),
        };

        let trust = match self.trust {
            None => {
                issue(
                    "trust",
                    "missing; add [trust] with root, key and cert (the trust root certificate and this node's SM2 signing key and origin certificate, made by `tiersync pki`)"
                        .into(),
                );
                None
            }
            Some(t) => {
                let chain = t.chain.map(|p| resolve(base, &p));
                section_paths(
                    base,
                    code.as_ref(),
                    "trust",
                    [("root", t.root), ("key", t.key), ("cert", t.cert)],
                    ("root_key", t.root_key, "the trust root's key"),
                    &mut issue,
                )
                .map(|([root, key, cert], root_key)| TrustPaths {
                    root,
                    key,
                    cert,
                    root_key,
                    chain,
                })
            }
        };

        let digest_key_file = match self.deployment.and_then(|d| d.digest_key_file) {
            None => {
                issue(
                    "deployment.digest_key_file",
                    "missing; point it at the deployment-wide secret `deployment.key` made by `tiersync pki init`".into(),
                );
                None
            }
            Some(p) => Some(resolve(base, &p)),
        };

        let defaults = SyncTuning::default();
        let mut positive = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => {
                issue(key, "must be greater than 0".into());
                default
            }
            Some(v) => v,
            None => default,
        };
        let sync = SyncTuning {
            verify_origin: true,
            batch_records: positive(
                "sync.batch_records",
                self.sync.batch_records,
                defaults.batch_records,
            ),
            batch_bytes: positive(
                "sync.batch_bytes",
                self.sync.batch_bytes,
                defaults.batch_bytes,
            ),
            window: positive("sync.window", self.sync.window, defaults.window),
            heartbeat: Duration::from_secs(positive(
                "sync.heartbeat_secs",
                self.sync.heartbeat_secs.map(|v| v as usize),
                defaults.heartbeat.as_secs() as usize,
            ) as u64),
            stall_after: Duration::from_secs(positive(
                "sync.stall_secs",
                self.sync.stall_secs.map(|v| v as usize),
                defaults.stall_after.as_secs() as usize,
            ) as u64),
            max_frame_bytes: positive(
                "sync.max_frame_bytes",
                self.sync.max_frame_bytes,
                defaults.max_frame_bytes,
            ),
        };
        if sync.batch_bytes > sync.max_frame_bytes / 2 {
            issue(
                "sync.batch_bytes",
                format!(
                    "{} is more than half of sync.max_frame_bytes ({}); a full batch could exceed the frame limit",
                    sync.batch_bytes, sync.max_frame_bytes
                ),
            );
        }

        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(NodeConfig {
            code: code.expect("checked"),
            name: node.name,
            storage: storage.expect("checked"),
            lease,
            listen_peer,
            listen_api,
            listen_adapter,
            listen_admin,
            parent,
            tls: tls.expect("checked"),
            trust: trust.expect("checked"),
            digest_key_file: digest_key_file.expect("checked"),
            sync,
        })
    }
}

/// The three required paths of a key-material section and its optional
/// key that only the city may hold, resolved against `base`; each missing
/// path, and the city-only key set below the city, is reported.
fn section_paths(
    base: &Path,
    code: Option<&DivisionCode>,
    section: &str,
    required: [(&str, Option<PathBuf>); 3],
    city_only: (&str, Option<PathBuf>, &str),
    issue: &mut impl FnMut(&str, String),
) -> Option<([PathBuf; 3], Option<PathBuf>)> {
    let [a, b, c] = required.map(|(name, p)| match p {
        None => {
            issue(&format!("{section}.{name}"), "missing".into());
            None
        }
        Some(p) => Some(resolve(base, &p)),
    });
    let (name, key, what) = city_only;
    let key = key.map(|p| resolve(base, &p));
    if let (Some(_), Some(code)) = (&key, code)
        && code.tier() != Tier::City
    {
        issue(
            &format!("{section}.{name}"),
            format!(
                "only the city holds {what}, and `{code}` is a {}; remove {section}.{name} from this node",
                code.tier()
            ),
        );
    }
    Some(([a?, b?, c?], key))
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn validate(text: &str) -> Result<NodeConfig, Vec<String>> {
        let raw: RawConfig = toml::from_str(text).expect("toml");
        raw.validate(Path::new("/etc/tiersync"))
            .map_err(|issues| issues.into_iter().map(|i| i.to_string()).collect())
    }

    const COMMUNITY: &str = r#"
version = 1
[node]
code = "511102004001"
tier = "community"
[storage]
path = "node.db"
[listen]
api = "127.0.0.1:7401"
[parent]
code = "511102004"
address = "street.example:7400"
[tls]
ca = "pki/ca.pem"
cert = "pki/511102004001.pem"
key = "pki/511102004001.key"
[trust]
root = "pki/trust-root.pem"
key = "pki/511102004001.sm2.key"
cert = "pki/511102004001.sm2.pem"
[deployment]
digest_key_file = "pki/deployment.key"
"#;

    #[test]
    fn a_good_community_config_validates() {
        let c = validate(COMMUNITY).unwrap();
        assert_eq!(c.code.as_str(), "511102004001");
        assert_eq!(c.parent.as_ref().unwrap().code.as_str(), "511102004");
        assert_eq!(
            c.storage,
            Storage::Sqlite(PathBuf::from("/etc/tiersync/node.db"))
        );
        assert_eq!(c.tls.ca, PathBuf::from("/etc/tiersync/pki/ca.pem"));
    }

    #[test]
    fn lease_timing_defaults_and_its_limits() {
        let c = validate(COMMUNITY).unwrap();
        assert_eq!(
            (c.lease.renew.as_millis(), c.lease.expiry.as_millis()),
            (1000, 10_000)
        );
        let with = |renew: &str, expiry: &str| {
            COMMUNITY.replace(
                "path = \"node.db\"",
                &format!(
                    "path = \"node.db\"\nlease_renew_ms = {renew}\nlease_expiry_ms = {expiry}"
                ),
            )
        };
        let c = validate(&with("250", "2000")).unwrap();
        assert_eq!(
            (c.lease.renew.as_millis(), c.lease.expiry.as_millis()),
            (250, 2000)
        );
        let errors = validate(&with("1000", "1500")).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("`storage.lease_expiry_ms`: 1500 ms is less than twice"),
            "{errors:?}"
        );
        let errors = validate(&with("0", "1500")).unwrap_err();
        assert_eq!(
            errors,
            vec!["`storage.lease_renew_ms`: must be greater than 0".to_owned()]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = COMMUNITY
            .replace("tier = \"community\"", "tier = \"street\"")
            .replace("code = \"511102004\"", "code = \"511102005\"")
            .replace("api = \"127.0.0.1:7401\"", "api = \"localhost\"");
        let errors = validate(&text).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "`node.tier`: `street` does not match node.code `511102004001`, which has 12 digits and so is a community node; a street code has 9 digits".to_owned(),
                "`listen.api`: `localhost` is not an IP:port address, e.g. `0.0.0.0:7400`".to_owned(),
                "`parent.code`: `511102005` does not own node `511102004001`; the parent of `511102004001` is `511102004` (its first 9 digits)".to_owned(),
            ]
        );
    }

    #[test]
    fn missing_and_misplaced_parent() {
        let no_parent = COMMUNITY.split("[parent]").next().unwrap().to_owned()
            + "[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[trust]\nroot = \"r\"\nkey = \"k\"\ncert = \"c\"\n[deployment]\ndigest_key_file = \"d\"\n";
        assert_eq!(
            validate(&no_parent).unwrap_err(),
            vec!["`parent`: missing; node `511102004001` is a community and must dial its parent `511102004`: add [parent] with code = \"511102004\" and address = \"HOST:PORT\"".to_owned()]
        );
        let city = COMMUNITY
            .replace("code = \"511102004001\"", "code = \"5111\"")
            .replace("tier = \"community\"", "tier = \"city\"");
        assert_eq!(
            validate(&city).unwrap_err(),
            vec![
                "`listen.peer`: missing; a city node listens for its children, e.g. `0.0.0.0:7400`".to_owned(),
                "`parent`: node `5111` is a city, the root of a deployment, and has no parent; remove the [parent] table".to_owned(),
            ]
        );
    }

    #[test]
    fn only_the_city_may_hold_the_ca_and_trust_root_keys() {
        let community = COMMUNITY
            .replace(
                "key = \"pki/511102004001.key\"\n",
                "key = \"pki/511102004001.key\"\nca_key = \"pki/ca.key\"\n",
            )
            .replace(
                "cert = \"pki/511102004001.sm2.pem\"\n",
                "cert = \"pki/511102004001.sm2.pem\"\nroot_key = \"pki/trust-root.key\"\n",
            );
        assert_eq!(
            validate(&community).unwrap_err(),
            vec![
                "`tls.ca_key`: only the city holds the deployment CA key, and `511102004001` is a community; remove tls.ca_key from this node".to_owned(),
                "`trust.root_key`: only the city holds the trust root's key, and `511102004001` is a community; remove trust.root_key from this node".to_owned(),
            ]
        );
        let no_trust = COMMUNITY.split("[trust]").next().unwrap().to_owned()
            + "[deployment]\ndigest_key_file = \"pki/deployment.key\"\n";
        let issues = validate(&no_trust).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].starts_with("`trust`: missing; add [trust]"),
            "{issues:?}"
        );
    }

    #[test]
    fn unknown_keys_and_versions_are_refused() {
        let raw: Result<RawConfig, _> =
            toml::from_str("version = 1\n[node]\ncode = \"5111\"\ncolour = \"red\"\n");
        assert!(
            raw.unwrap_err()
                .to_string()
                .contains("unknown field `colour`")
        );
        let errors = validate(&COMMUNITY.replace("version = 1", "version = 7")).unwrap_err();
        assert_eq!(
            errors,
            vec!["`version`: version 7 is not supported; this build reads version 1".to_owned()]
        );
    }

    #[test]
    fn env_overrides_apply_before_validation() {
        let raw: RawConfig = toml::from_str(COMMUNITY).unwrap();
        let env = BTreeMap::from([
            ("TIERSYNC_STORAGE_PATH".to_owned(), "/data/x.db".to_owned()),
            (
                "TIERSYNC_PARENT_ADDRESS".to_owned(),
                "10.0.0.1:7400".to_owned(),
            ),
        ]);
        let c = raw.with_env(&env).validate(Path::new("/etc")).unwrap();
        assert_eq!(c.storage, Storage::Sqlite(PathBuf::from("/data/x.db")));
        assert_eq!(c.parent.unwrap().addresses, vec!["10.0.0.1:7400"]);
        // an active county and its standby, comma-separated
        let raw: RawConfig = toml::from_str(COMMUNITY).unwrap();
        let env = BTreeMap::from([(
            "TIERSYNC_PARENT_ADDRESS".to_owned(),
            "10.0.0.1:7400, 10.0.0.2:7400".to_owned(),
        )]);
        let c = raw.with_env(&env).validate(Path::new("/etc")).unwrap();
        assert_eq!(
            c.parent.unwrap().addresses,
            vec!["10.0.0.1:7400", "10.0.0.2:7400"]
        );
    }

    #[test]
    fn postgres_storage_is_one_line_and_its_password_is_never_shown() {
        let c = validate(&COMMUNITY.replace(
            "path = \"node.db\"",
            "path = \"postgres://tiersync:s3cret@db.example:5432/county\"",
        ))
        .unwrap();
        assert_eq!(
            c.storage,
            Storage::Postgres("postgres://tiersync:s3cret@db.example:5432/county".into())
        );
        assert_eq!(
            c.storage.to_string(),
            "postgres://tiersync:***@db.example:5432/county"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let errors = validate(&COMMUNITY.replace(
            "path = \"node.db\"",
            "path = \"postgres://tiersync:s3cret@db.example:notaport/county\"",
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(
                "`storage.path`: storage.path `postgres://tiersync:***@db.example:notaport/county` is not a usable PostgreSQL URL"
            ),
            "{errors:?}"
        );
        assert!(!errors[0].contains("s3cret"));
    }

    #[test]
    fn a_parent_may_list_several_addresses() {
        let c = validate(&COMMUNITY.replace(
            "address = \"street.example:7400\"",
            "addresses = [\"street-a.example:7400\", \"street-b.example:7400\"]",
        ))
        .unwrap();
        assert_eq!(
            c.parent.unwrap().addresses,
            vec!["street-a.example:7400", "street-b.example:7400"]
        );
        let errors = validate(&COMMUNITY.replace(
            "address = \"street.example:7400\"",
            "address = \"a:1\"\naddresses = [\"b:2\"]",
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            vec!["`parent.addresses`: set either parent.address or parent.addresses, not both"]
        );
        let errors = validate(&COMMUNITY.replace(
            "address = \"street.example:7400\"",
            "addresses = [\"b:2\", \"nope\"]",
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            vec!["`parent.addresses`: `nope` is not HOST:PORT, e.g. `street.example:7400`"]
        );
    }
}
