//! TLS set-up for both carriers: the relay's certificate (PEM files or a
//! self-signed one), and the client's verification (a pinned certificate or
//! the usual web roots — never no verification at all).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring as provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{ConfigError, Error};

/// ALPN protocols a browser offers over TCP, in its order.
pub const ALPN_TCP: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN of an HTTP/1.1-only connection (a browser's WebSocket to a server
/// without RFC 8441).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// ALPN for QUIC.
pub const ALPN_QUIC: &[u8] = b"h3";

/// SHA-256 of a certificate (DER), as carried in a relay line.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertPin(pub [u8; 32]);

impl CertPin {
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }

    /// The pin of the first certificate in a PEM file (another server's
    /// self-signed certificate, e.g. the web server a relay sits behind).
    pub fn of_pem_file(path: &std::path::Path) -> Result<Self, Error> {
        let pem = std::fs::read(path).map_err(|cause| Error::ReadFile {
            path: path.display().to_string(),
            cause,
        })?;
        let first = CertificateDer::pem_slice_iter(&pem)
            .next()
            .ok_or_else(|| "no CERTIFICATE block found".to_string())
            .and_then(|c| c.map_err(|e| format!("certificate PEM: {e}")))
            .map_err(|reason| {
                Error::Config(ConfigError::BadCertificate {
                    path: path.display().to_string(),
                    reason,
                })
            })?;
        Ok(Self::of(&first))
    }
}

impl std::fmt::Debug for CertPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CertPin({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A certificate chain and its private key, as the relay serves them.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let cert_pem = read_file(cert)?;
        let key_pem = read_file(key)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            Error::Config(ConfigError::BadCertificate { reason, .. }) => {
                Error::Config(ConfigError::BadCertificate {
                    path: format!("{} / {}", cert.display(), key.display()),
                    reason,
                })
            }
            other => other,
        })
    }

    /// Parses PEM text; also checks the key matches the certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let bad = |reason: String| {
            Error::Config(ConfigError::BadCertificate {
                path: "<pem>".into(),
                reason,
            })
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(bad("no CERTIFICATE block found".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| bad(format!("private key PEM: {e}")))?;
        let identity = Self { chain, key };
        // Building a config checks the key parses and matches the leaf.
        let certified = provider::default_provider()
            .key_provider
            .load_private_key(identity.key.clone_key())
            .map_err(|e| bad(format!("private key: {e}")))?;
        if certified.algorithm() == rustls::SignatureAlgorithm::ED25519 {
            return Err(bad(
                "an Ed25519 key: browsers accept only ECDSA and RSA certificates, and so do \
                 Burrow's clients, which offer what Chrome offers"
                    .into(),
            ));
        }
        let ck = rustls::sign::CertifiedKey::new(identity.chain.clone(), certified);
        ck.keys_match()
            .map_err(|e| bad(format!("key does not match certificate: {e}")))?;
        Ok(identity)
    }

    /// A fresh self-signed certificate for `name` (ECDSA P-256).
    /// Returns the identity and its PEM forms (certificate, key) for saving.
    pub fn self_signed(name: &str) -> Result<(Self, String, String), Error> {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).map_err(|e| {
            Error::Config(ConfigError::Invalid {
                key: "self-signed name".into(),
                reason: e.to_string(),
            })
        })?;
        let cert_pem = ck.cert.pem();
        let key_pem = ck.signing_key.serialize_pem();
        let identity = Self::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?;
        Ok((identity, cert_pem, key_pem))
    }

    /// Pin of the leaf certificate.
    pub fn pin(&self) -> Option<CertPin> {
        self.chain.first().map(CertPin::of)
    }

    /// A server config for the TCP carrier (ALPN h2, http/1.1).
    pub fn server_config_tcp(&self) -> Result<Arc<ServerConfig>, Error> {
        Certificates::new(self)?.server_config_tcp()
    }

    /// A server config for the QUIC carrier (ALPN h3, TLS 1.3 only).
    pub fn server_config_quic(&self) -> Result<Arc<ServerConfig>, Error> {
        Certificates::new(self)?.server_config_quic()
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, Error> {
        let signing = provider::default_provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| {
                Error::Config(ConfigError::BadCertificate {
                    path: "<certificate>".into(),
                    reason: e.to_string(),
                })
            })?;
        Ok(Arc::new(CertifiedKey::new(self.chain.clone(), signing)))
    }
}

/// The certificate a running server presents. Both carriers' TLS configs
/// ask it at each handshake, so [`Certificates::replace`] (a renewed
/// certificate, on SIGHUP) changes what new connections see while every
/// open connection and tunnel carries on untouched.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn new(identity: &Identity) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            current: RwLock::new(identity.certified_key()?),
        }))
    }

    /// Serves `identity` to every later handshake.
    pub fn replace(&self, identity: &Identity) -> Result<(), Error> {
        let key = identity.certified_key()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// The pin of the leaf certificate served now.
    pub fn pin(&self) -> Option<CertPin> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .cert
            .first()
            .map(CertPin::of)
    }

    /// A server config for the TCP carrier (ALPN h2, http/1.1).
    pub fn server_config_tcp(self: &Arc<Self>) -> Result<Arc<ServerConfig>, Error> {
        self.server_config(ALPN_TCP.iter().map(|p| p.to_vec()).collect())
    }

    /// A server config for the QUIC carrier (ALPN h3, TLS 1.3 only).
    pub fn server_config_quic(self: &Arc<Self>) -> Result<Arc<ServerConfig>, Error> {
        self.server_config(vec![ALPN_QUIC.to_vec()])
    }

    fn server_config(self: &Arc<Self>, alpn: Vec<Vec<u8>>) -> Result<Arc<ServerConfig>, Error> {
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(Error::tls_setup)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = alpn;
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|cause| Error::ReadFile {
        path: path.display().to_string(),
        cause,
    })
}

/// How a client decides the relay's certificate is the right one.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The leaf certificate must have exactly this SHA-256.
    Pinned(CertPin),
    /// The chain must verify against the bundled web roots for the name.
    WebRoots,
}

/// The signature schemes a current Chrome offers, in its order.
const CHROME_SIGNATURE_SCHEMES: [SignatureScheme; 8] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// The provider's signature verification with Chrome's schemes in Chrome's
/// order: what a client offers in its `signature_algorithms` extension is
/// this list (the provider's own order starts with P-384 and offers
/// Ed25519, which Chrome does not).
fn browser_signature_algorithms(base: WebPkiSupportedAlgorithms) -> WebPkiSupportedAlgorithms {
    type Mapping = Vec<(
        SignatureScheme,
        &'static [&'static dyn rustls::pki_types::SignatureVerificationAlgorithm],
    )>;
    static MAPPING: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
    let mapping = MAPPING.get_or_init(|| {
        CHROME_SIGNATURE_SCHEMES
            .iter()
            .filter_map(|scheme| base.mapping.iter().find(|(s, _)| s == scheme).copied())
            .collect()
    });
    WebPkiSupportedAlgorithms {
        all: base.all,
        mapping,
    }
}

/// A current Chrome's cipher-suite order (TLS 1.3 first, AES-128 first),
/// signature schemes and key-exchange groups: the post-quantum hybrid
/// X25519MLKEM768 first (from aws-lc-rs; ring has no ML-KEM), then X25519,
/// P-256 and P-384. Like Chrome, the hello carries two key shares, the
/// hybrid's and X25519's (rustls adds the hybrid's classical half), so a
/// server without ML-KEM (nginx on OpenSSL 3.0, the relay's own front)
/// picks X25519 without a retry.
fn browser_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite as cs;
    use rustls::crypto::ring::kx_group;
    let mut p = provider::default_provider();
    p.signature_verification_algorithms =
        browser_signature_algorithms(p.signature_verification_algorithms);
    p.kx_groups = vec![
        rustls::crypto::aws_lc_rs::kx_group::X25519MLKEM768,
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
    ];
    p.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    p
}

/// A client config for one carrier: `alpn` is [`ALPN_TCP`] or [`ALPN_QUIC`].
pub fn client_config(trust: &Trust, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, Error> {
    let provider = Arc::new(browser_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(Error::tls_setup)?;
    let mut cfg = match trust {
        Trust::WebRoots => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pin: *pin,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Accepts exactly one certificate (by SHA-256) and still verifies the
/// handshake signatures with it, so the peer must hold the matching key.
#[derive(Debug)]
struct PinVerifier {
    pin: CertPin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if CertPin::of(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{HandshakeKind, NamedGroup};

    use super::*;

    /// The ClientHello a client with `config` writes first, as
    /// (cipher suites, extensions as (type, body)).
    fn client_hello(config: Arc<ClientConfig>) -> (Vec<u16>, Vec<(u16, Vec<u8>)>) {
        let name = ServerName::try_from("relay.example.org").expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).expect("hello");
        let mut r = Reader(&wire);
        assert_eq!(r.take(1), [22], "a handshake record");
        r.take(4); // legacy version, length
        assert_eq!(r.take(1), [1], "a ClientHello");
        r.take(3 + 2 + 32); // length, legacy version, random
        let session_id = r.u8() as usize;
        r.take(session_id);
        let suites = r.u16() as usize;
        let suites = r.take(suites).chunks(2).map(be16).collect();
        let compression = r.u8() as usize;
        r.take(compression);
        let len = r.u16() as usize;
        let mut exts = Reader(r.take(len));
        let mut extensions = Vec::new();
        while !exts.0.is_empty() {
            let ty = exts.u16();
            let len = exts.u16() as usize;
            extensions.push((ty, exts.take(len).to_vec()));
        }
        (suites, extensions)
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }
        fn u16(&mut self) -> u16 {
            be16(self.take(2))
        }
    }

    fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    /// A list in an extension body: a length prefix of `prefix` bytes, then
    /// 16-bit values.
    fn u16_list(body: &[u8], prefix: usize) -> Vec<u16> {
        body[prefix..].chunks(2).map(be16).collect()
    }

    /// The key_share extension's entries as (group, key length).
    fn key_shares(body: &[u8]) -> Vec<(u16, usize)> {
        let mut r = Reader(body);
        let len = r.u16() as usize;
        let mut r = Reader(r.take(len));
        let mut shares = Vec::new();
        while !r.0.is_empty() {
            let group = r.u16();
            let len = r.u16() as usize;
            r.take(len);
            shares.push((group, len));
        }
        shares
    }

    fn extension(exts: &[(u16, Vec<u8>)], ty: u16) -> &[u8] {
        &exts
            .iter()
            .find(|(t, _)| *t == ty)
            .unwrap_or_else(|| panic!("extension {ty} missing"))
            .1
    }

    /// Completes a handshake in memory; returns the key-exchange group both
    /// sides settled on and the kind of handshake (a HelloRetryRequest
    /// would have cost a round trip).
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> (NamedGroup, HandshakeKind) {
        let name = ServerName::try_from("relay.example.org").expect("name");
        let mut c = rustls::ClientConnection::new(client, name).expect("client");
        let mut s = rustls::ServerConnection::new(server).expect("server");
        while c.is_handshaking() || s.is_handshaking() {
            let mut wire = Vec::new();
            c.write_tls(&mut wire).expect("client writes");
            s.read_tls(&mut wire.as_slice()).expect("server reads");
            s.process_new_packets().expect("server accepts");
            let mut wire = Vec::new();
            s.write_tls(&mut wire).expect("server writes");
            c.read_tls(&mut wire.as_slice()).expect("client reads");
            c.process_new_packets().expect("client accepts");
        }
        let group = c.negotiated_key_exchange_group().expect("group").name();
        assert_eq!(
            s.negotiated_key_exchange_group().expect("group").name(),
            group
        );
        (group, c.handshake_kind().expect("kind"))
    }

    #[test]
    fn the_hybrid_key_share_completes_with_a_post_quantum_server_and_x25519_with_ours() {
        let (identity, _, _) = Identity::self_signed("relay.example.org").expect("identity");
        let client = client_config(&Trust::Pinned(identity.pin().expect("pin")), &ALPN_TCP)
            .expect("client config");

        // A server that has ML-KEM (aws-lc-rs, X25519MLKEM768 first) takes the hybrid.
        let pq = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_cert_resolver(Certificates::new(&identity).expect("certificates"));
        assert_eq!(
            handshake(client.clone(), Arc::new(pq)),
            (NamedGroup::X25519MLKEM768, HandshakeKind::Full)
        );

        // The relay's front (ring: no ML-KEM) takes the second share, X25519,
        // in the first round trip, as nginx on OpenSSL 3.0 does with Chrome.
        let ours = identity.server_config_tcp().expect("server config");
        assert_eq!(
            handshake(client, ours),
            (NamedGroup::X25519, HandshakeKind::Full)
        );
    }

    #[test]
    fn an_ed25519_certificate_is_refused_with_its_reason() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["relay.example.org".into()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let err = Identity::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect_err("refused");
        assert!(err.to_string().contains("an Ed25519 key"), "{err}");
    }

    #[test]
    fn the_client_hello_has_chromes_orders_and_a_fresh_extension_order_each_time() {
        let pin = CertPin([7; 32]);
        for trust in [Trust::Pinned(pin), Trust::WebRoots] {
            let config = client_config(&trust, &ALPN_TCP).expect("config");
            let (suites, exts) = client_hello(config.clone());
            // Chrome's, less the CBC and plain-RSA suites rustls lacks; then
            // the renegotiation SCSV rustls always adds and Chrome does not.
            assert_eq!(
                suites,
                [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x00ff],
                "{trust:?}"
            );
            // signature_algorithms: Chrome's eight, in Chrome's order.
            assert_eq!(
                u16_list(extension(&exts, 13), 2),
                [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601],
                "{trust:?}"
            );
            // supported_groups: Chrome's (less its GREASE value).
            assert_eq!(
                u16_list(extension(&exts, 10), 2),
                [0x11ec, 0x001d, 0x0017, 0x0018]
            );
            // key_share: Chrome's two, the hybrid's (an ML-KEM-768
            // encapsulation key, 1184 bytes, then an X25519 key) and X25519's.
            assert_eq!(
                key_shares(extension(&exts, 51)),
                [(0x11ec, 1216), (0x001d, 32)]
            );
            assert_eq!(extension(&exts, 16), b"\x00\x0c\x02h2\x08http/1.1");

            // The same extensions each time, in an order drawn per connection.
            let types = |exts: &[(u16, Vec<u8>)]| exts.iter().map(|e| e.0).collect::<Vec<_>>();
            let first = types(&exts);
            let mut sorted_first = first.clone();
            sorted_first.sort_unstable();
            let mut orders = std::collections::HashSet::new();
            for _ in 0..8 {
                let (_, exts) = client_hello(config.clone());
                let mut order = types(&exts);
                orders.insert(order.clone());
                order.sort_unstable();
                assert_eq!(order, sorted_first);
            }
            assert!(orders.len() > 1, "one order in 8 hellos: {first:?}");
        }
    }
}
