//! The cluster's trust: a certificate authority mesofs makes itself, a certificate per
//! component whose subject names its kind and name (its principal), and the mutual-TLS
//! configuration (rustls, through tonic) of every connection.
//!
//! A TLS directory holds `ca.pem` (the cluster CA's certificate), `cert.pem` and `key.pem`
//! (the component's). A CA directory holds `ca.pem` and `ca.key`. Keys are written mode 0600.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// What a certificate holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A master: speaks Raft, serves agents and mounts.
    Master,
    /// An agent: registers under its name, runs tasks, serves its sandboxes.
    Agent,
    /// A mount: writes for the users of its machine, reads sandboxes.
    Mount,
    /// An operator's tool: writes as a mount does.
    Operator,
}

impl Kind {
    /// Every kind, in order.
    pub const ALL: [Kind; 4] = [Kind::Master, Kind::Agent, Kind::Mount, Kind::Operator];

    /// Its lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Master => "master",
            Kind::Agent => "agent",
            Kind::Mount => "mount",
            Kind::Operator => "operator",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Kind, TlsError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                TlsError::Invalid(format!(
                    "unknown kind {s:?}: master, agent, mount or operator"
                ))
            })
    }
}

/// Who a connection's peer is: its certificate's kind and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Its kind.
    pub kind: Kind,
    /// Its name: a master's id, an agent's id, a mount's or operator's chosen name.
    pub name: String,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.name)
    }
}

/// The URI a certificate's subject alternative names carry its principal in.
fn principal_uri(kind: Kind, name: &str) -> String {
    format!("mesofs://{kind}/{name}")
}

/// Why a certificate could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA directory already holds a CA.
    #[error("{0} already holds a CA (ca.key): remove it first to make a new one, or use it")]
    Exists(PathBuf),
    /// A certificate or key could not be made or parsed.
    #[error("{0}")]
    Crypto(String),
    /// A name, kind or certificate is not what mesofs needs.
    #[error("{0}")]
    Invalid(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> TlsError {
        TlsError::Crypto(e.to_string())
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `text` to `path` (replacing it) with `mode`, durably.
fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Valid from yesterday (by the system clock) for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Civil date from days since 1970 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    // From yesterday: a clock a little behind must not find it not yet valid.
    params.not_before = date_time_ymd(year, month, day) - std::time::Duration::from_secs(86_400);
    params.not_after = date_time_ymd(year + years, month, day.min(28));
}

/// Makes a cluster CA in `dir`: `ca.pem` and `ca.key`. Refuses to replace an existing one.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if dir.join("ca.key").exists() {
        return Err(TlsError::Exists(dir.to_path_buf()));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mesofs cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, 10);
    let cert = params.self_signed(&key)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
    write(&dir.join("ca.pem"), &cert.pem(), 0o644)
}

/// Checks a principal's name: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
fn valid_name(name: &str) -> Result<(), TlsError> {
    crate::spec::validate_name(name)
        .map_err(|e| TlsError::Invalid(format!("invalid name {name:?}: {e}")))
}

/// Issues a certificate for component `kind`/`name`, signed by the CA in `ca_dir`, valid for
/// the `hosts` (names or addresses others dial it by), into `out`: `cert.pem`, `key.pem` and a
/// copy of `ca.pem`.
pub fn issue(
    ca_dir: &Path,
    kind: Kind,
    name: &str,
    hosts: &[String],
    out: &Path,
) -> Result<(), TlsError> {
    valid_name(name)?;
    let ca_pem = read(&ca_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("mesofs {kind} {name}"));
    params.distinguished_name = dn;
    let uri = principal_uri(kind, name)
        .try_into()
        .map_err(|_| TlsError::Invalid(format!("{name:?} does not fit in a URI")))?;
    params.subject_alt_names.push(SanType::URI(uri));
    for h in hosts {
        let san = match h.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                h.clone()
                    .try_into()
                    .map_err(|_| TlsError::Invalid(format!("invalid host name {h:?}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, 2);
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out).map_err(|source| TlsError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    write(&out.join("key.pem"), &key.serialize_pem(), 0o600)?;
    write(&out.join("cert.pem"), &cert.pem(), 0o644)?;
    write(&out.join("ca.pem"), &ca_pem, 0o644)
}

/// The principal a certificate (DER) names.
pub fn principal_of(der: &[u8]) -> Result<Principal, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Invalid(format!("unreadable certificate: {e}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::Invalid(format!("unreadable certificate names: {e}")))?;
    let uris = sans.into_iter().flat_map(|s| s.value.general_names.iter());
    for name in uris {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(rest) = uri.strip_prefix("mesofs://") {
                if let Some((kind, name)) = rest.split_once('/') {
                    let kind: Kind = kind.parse()?;
                    valid_name(name)?;
                    return Ok(Principal {
                        kind,
                        name: name.to_string(),
                    });
                }
            }
        }
    }
    Err(TlsError::Invalid(
        "the certificate names no mesofs principal (a URI mesofs://<kind>/<name>): it was not issued by `mesofs cert issue`".into(),
    ))
}

/// A component's TLS files, loaded.
#[derive(Clone)]
pub struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
    /// The principal its certificate names.
    pub principal: Principal,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        write!(f, "TlsFiles({})", self.principal)
    }
}

impl TlsFiles {
    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<TlsFiles, TlsError> {
        let ca = read(&dir.join("ca.pem"))?;
        let cert = read(&dir.join("cert.pem"))?;
        let key = read(&dir.join("key.pem"))?;
        let der = pem_der(&cert)?;
        let principal = principal_of(&der)?;
        Ok(TlsFiles {
            ca,
            cert,
            key,
            principal,
        })
    }

    /// What a server presents and requires: its certificate, and a client certificate from the
    /// cluster CA (a client without one is refused at the handshake).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
    }

    /// What a client presents and trusts: its certificate, and servers whose certificate the
    /// cluster CA signed for the host it dials.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(Identity::from_pem(&self.cert, &self.key))
            .ca_certificate(Certificate::from_pem(&self.ca))
    }
}

/// The DER of the first certificate in a PEM text.
fn pem_der(pem: &str) -> Result<Vec<u8>, TlsError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("unreadable PEM certificate: {e}")))?;
    Ok(parsed.contents)
}

/// The principal of a request's peer, from its client certificate.
pub fn peer_principal<T>(req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        tonic::Status::unauthenticated(
            "no client certificate: connect with mutual TLS (a certificate from `mesofs cert issue`)",
        )
    })?;
    let first = certs
        .first()
        .ok_or_else(|| tonic::Status::unauthenticated("an empty client certificate chain"))?;
    principal_of(first.as_ref()).map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

/// Who a server lets call it: with certificates, callers of the given kinds; without (an
/// `--insecure` server), anyone, since it cannot tell callers apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// Mutual TLS: the caller's certificate names its principal.
    Certificates,
    /// Plain gRPC (`--insecure`): no principal, nothing refused.
    Open,
}

impl Guard {
    /// The guard of a server configured with `tls` (or without).
    pub fn of(tls: Option<&TlsFiles>) -> Guard {
        if tls.is_some() {
            Guard::Certificates
        } else {
            Guard::Open
        }
    }

    /// The caller's principal, if it is one of `kinds`; otherwise PERMISSION_DENIED (or
    /// UNAUTHENTICATED without a mesofs certificate), logged here and said to the caller.
    /// `what` names the call, as in "speak Raft". An open guard admits anyone, as `None`.
    pub fn admit<T>(
        self,
        req: &tonic::Request<T>,
        what: &str,
        kinds: &[Kind],
    ) -> Result<Option<Principal>, tonic::Status> {
        if self == Guard::Open {
            return Ok(None);
        }
        let remote = req
            .remote_addr()
            .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
        let who = peer_principal(req).inspect_err(|s| {
            tracing::warn!(%remote, what, reason = %s.message(), "refused a caller without a mesofs certificate");
        })?;
        if kinds.contains(&who.kind) {
            return Ok(Some(who));
        }
        let allowed: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        let message = format!(
            "{who} may not {what}: only a certificate of kind {} may",
            allowed.join(" or ")
        );
        tracing::warn!(%remote, principal = %who, "refused: {message}");
        Err(tonic::Status::permission_denied(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::files_client::FilesClient;
    use crate::proto::files_server::{Files, FilesServer};
    use crate::proto::{ReadReply, ReadRequest, UsageReply, UsageRequest};
    use tonic::transport::{Endpoint, Server};

    fn issued(ca: &Path, kind: Kind, name: &str, out: &Path) -> TlsFiles {
        issue(
            ca,
            kind,
            name,
            &["127.0.0.1".into(), "localhost".into()],
            out,
        )
        .unwrap();
        TlsFiles::load(out).unwrap()
    }

    #[test]
    fn a_certificate_names_its_principal_and_its_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        assert!(
            matches!(init_ca(&ca), Err(TlsError::Exists(_))),
            "a CA is never replaced"
        );
        let files = issued(&ca, Kind::Agent, "a-1", &dir.path().join("a1"));
        assert_eq!(
            files.principal,
            Principal {
                kind: Kind::Agent,
                name: "a-1".into()
            }
        );
        assert_eq!(files.principal.to_string(), "agent:a-1");
        for key in [ca.join("ca.key"), dir.path().join("a1/key.pem")] {
            let mode = std::fs::metadata(&key).unwrap().permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600,
                "{key:?}"
            );
        }
        for bad in ["", "a/b", "../x", &"n".repeat(65)] {
            assert!(
                issue(&ca, Kind::Mount, bad, &[], &dir.path().join("bad")).is_err(),
                "{bad:?}"
            );
        }
        assert!("root".parse::<Kind>().is_err());
    }

    struct WhoAmI;

    #[tonic::async_trait]
    impl Files for WhoAmI {
        async fn read(
            &self,
            request: tonic::Request<ReadRequest>,
        ) -> Result<tonic::Response<ReadReply>, tonic::Status> {
            let who = peer_principal(&request)?;
            Ok(tonic::Response::new(ReadReply {
                data: who.to_string().into_bytes(),
                size: 0,
            }))
        }

        async fn usage(
            &self,
            _request: tonic::Request<UsageRequest>,
        ) -> Result<tonic::Response<UsageReply>, tonic::Status> {
            Err(tonic::Status::unimplemented(
                "this test asks only who reads",
            ))
        }
    }

    #[tokio::test]
    async fn mutual_tls_tells_the_server_its_peer_and_refuses_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other_ca) = (dir.path().join("ca"), dir.path().join("other"));
        init_ca(&ca).unwrap();
        init_ca(&other_ca).unwrap();
        let server = issued(&ca, Kind::Agent, "a1", &dir.path().join("server"));
        let mount = issued(&ca, Kind::Mount, "m1", &dir.path().join("mount"));
        let stranger = issued(&other_ca, Kind::Mount, "m1", &dir.path().join("stranger"));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .tls_config(server.server())
                .unwrap()
                .add_service(FilesServer::new(WhoAmI))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let ask = |tls: Option<ClientTlsConfig>| async move {
            let mut ep = Endpoint::from_shared(format!("https://{addr}")).unwrap();
            if let Some(tls) = tls {
                ep = ep.tls_config(tls).unwrap();
            }
            let ch = ep.connect().await.map_err(|e| e.to_string())?;
            FilesClient::new(ch)
                .read(ReadRequest::default())
                .await
                .map(|r| String::from_utf8(r.into_inner().data).unwrap())
                .map_err(|s| s.message().to_string())
        };
        assert_eq!(ask(Some(mount.client())).await.unwrap(), "mount:m1");
        assert!(
            ask(Some(stranger.client())).await.is_err(),
            "another CA's certificate"
        );
        let no_cert = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&mount.ca));
        assert!(ask(Some(no_cert)).await.is_err(), "no client certificate");
    }
}
