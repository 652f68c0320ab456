//! Department systems' certificates: who calls the adapter port.
//!
//! A department certificate names one department at one node, as the URI
//! SAN `tiersync://department/<node>/<department>`, and is issued by the
//! deployment CA like a node certificate. It is a client certificate only
//! (EKU clientAuth) and carries no node URI, so the peer port refuses it
//! as it refuses anything that is not a node; the adapter port accepts only
//! department certificates for its own node.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::CertificateDer;
use tiersync_proto::types::DivisionCode;

use super::pki::{Ca, CertifiedKey, PkiError, random_serial, validity_window, write_issued};

/// Prefix of the URI SAN that names a department at a node.
pub const DEPARTMENT_URI_PREFIX: &str = "tiersync://department/";

/// A department system as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepartmentId {
    /// The node it docks at.
    pub node: DivisionCode,
    /// The department's code in the catalogue.
    pub department: String,
}

impl DepartmentId {
    /// The URI SAN naming it.
    pub fn uri(&self) -> String {
        format!("{DEPARTMENT_URI_PREFIX}{}/{}", self.node, self.department)
    }

    /// The department named by a certificate's URI SAN, if it has exactly
    /// one department URI; errors say what is wrong with the certificate.
    pub fn from_cert(der: &CertificateDer<'_>) -> Result<DepartmentId, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the client certificate does not parse: {e}"))?;
        let subject = cert.subject().to_string();
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| format!("certificate `{subject}` has an invalid SAN extension: {e}"))?;
        let uris: Vec<&str> = sans
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri)
                    if uri.starts_with(DEPARTMENT_URI_PREFIX) =>
                {
                    Some(*uri)
                }
                _ => None,
            })
            .collect();
        let uri = match uris.as_slice() {
            [uri] => *uri,
            [] => {
                return Err(format!(
                    "certificate `{subject}` is not a department certificate (no {DEPARTMENT_URI_PREFIX} name); issue one with `tiersync pki issue --department`"
                ));
            }
            several => {
                return Err(format!(
                    "certificate `{subject}` names several departments: {}",
                    several.join(", ")
                ));
            }
        };
        let rest = &uri[DEPARTMENT_URI_PREFIX.len()..];
        let (node, department) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{uri}` is not {DEPARTMENT_URI_PREFIX}<node>/<department>"))?;
        let node = DivisionCode::parse(node).map_err(|e| format!("`{uri}`: {e}"))?;
        crate::departments::check_code(department).map_err(|e| format!("`{uri}`: {e}"))?;
        Ok(DepartmentId {
            node,
            department: department.to_owned(),
        })
    }
}

/// Who called, from the verified client certificate of a request on the
/// adapter port.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<DepartmentId, String> {
    let certs = request.peer_certs().ok_or(
        "no verified client certificate on this connection: the adapter port needs mutual TLS with a department certificate",
    )?;
    let leaf = certs
        .first()
        .ok_or("the client presented an empty certificate chain")?;
    DepartmentId::from_cert(leaf)
}

/// The TLS client configuration of a department system (what the adapter
/// examples do in their own languages): TLS 1.3, the deployment CA as the
/// only root, the department certificate as the client certificate. Dial
/// the node by its server name `<node>.node.tiersync`.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let certs = |what: &str, pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in certs("the CA PEM", ca_pem)? {
        roots.add(ca).map_err(|e| format!("the CA PEM: {e}"))?;
    }
    let chain = certs("the department certificate PEM", cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the department key PEM: {e}"))?;
    let mut config = rustls::ClientConfig::builder_with_provider(super::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![super::tls::ALPN_H2.to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// A department certificate for `id`, valid from now for `validity_days`.
pub fn issue(ca: &Ca, id: &DepartmentId, validity_days: u32) -> Result<CertifiedKey, PkiError> {
    let subject = id.uri();
    if !ca.city().contains(&id.node) {
        return Err(PkiError::OutsideDeployment {
            code: id.node.clone(),
            city: ca.city().clone(),
        });
    }
    let (not_before, not_after) = validity_window(&subject, SystemTime::now(), validity_days)?;
    let generate = |source| PkiError::Generate {
        subject: subject.clone(),
        source,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{} at {}", id.department, id.node),
    );
    params.subject_alt_names = vec![SanType::URI(
        Ia5String::try_from(id.uri()).map_err(generate)?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    ca.issue_with(&subject, params)
}

/// Issues a department certificate with the CA in `dir` and writes
/// `<node>-<department>.pem` and `.key` (0600) there.
pub fn issue_into_dir(
    dir: &Path,
    id: &DepartmentId,
    validity_days: u32,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let issued = issue(&Ca::load_dir(dir)?, id, validity_days)?;
    write_issued(dir, &format!("{}-{}", id.node, id.department), &issued)
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::identity::tls::code_from_cert;

    #[test]
    fn a_department_certificate_names_the_department_and_no_node() {
        let city = DivisionCode::parse("5111").unwrap();
        let ca = Ca::generate(&city, 30).unwrap();
        let id = DepartmentId {
            node: DivisionCode::parse("511123").unwrap(),
            department: "civil-affairs".into(),
        };
        let issued = issue(&ca, &id, 30).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(DepartmentId::from_cert(&der).unwrap(), id);
        // The peer port reads node certificates only.
        assert!(code_from_cert(&der).is_err());

        let node = ca.issue_node(&id.node, 30).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert_pem.as_bytes()).unwrap();
        let e = DepartmentId::from_cert(&der).unwrap_err();
        assert!(e.contains("not a department certificate"), "{e}");

        let outside = DepartmentId {
            node: DivisionCode::parse("5101").unwrap(),
            ..id
        };
        assert!(matches!(
            issue(&ca, &outside, 30),
            Err(PkiError::OutsideDeployment { .. })
        ));
    }
}
