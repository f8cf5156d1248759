//! The certificate authority: an issuer (an intermediate certificate and its key) that signs
//! workload leaves from CSRs, reloaded when its files change, and the bootstrap of a new
//! install's trust anchor and issuer.
//!
//! Leaves carry the identity's two SANs (the SPIFFE URI and the DNS-style name) and nothing
//! else the CSR asked for: the CSR contributes its public key only. They are ECDSA P-256 (the
//! proxy's key), valid from 20 s in the past (clock skew between nodes) for the configured
//! lifetime, never past the issuer's own notAfter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use mesh_core::identity::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};

use crate::TlsError;
use crate::cert::{self, CertInfo, TrustAnchors};

/// How far back a leaf's notBefore goes, for clocks that lag the CA's.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(20);
/// The default leaf lifetime.
pub const DEFAULT_LEAF_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A certificate the CA issued: the leaf and the chain above it (without the trust anchor).
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf first, then the issuer.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter.
    pub valid_until: SystemTime,
}

/// An issuer: a CA certificate and its key.
#[derive(Debug)]
pub struct Issuer {
    cert: CertificateDer<'static>,
    info: CertInfo,
    signer: rcgen::Issuer<'static, KeyPair>,
}

impl Issuer {
    /// Reads the issuer's certificate and key from PEM text, checking that they belong
    /// together and that the certificate may sign.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let issuer_error = |reason: String| TlsError::Issuer(reason);
        let certs = cert::certs_from_pem(cert_pem.as_bytes())
            .map_err(|e| issuer_error(format!("certificate: {e}")))?;
        let cert = certs
            .into_iter()
            .next()
            .ok_or_else(|| issuer_error("no certificate".into()))?;
        let info = cert::inspect(&cert)?;
        if !info.is_ca {
            return Err(issuer_error(format!(
                "{} is not a CA certificate (basicConstraints CA:FALSE)",
                info.subject
            )));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| issuer_error(format!("the key does not parse: {e}")))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != info.public_key {
            return Err(issuer_error(format!(
                "the key does not match the certificate {}",
                info.subject
            )));
        }
        let signer = rcgen::Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| issuer_error(format!("certificate: {e}")))?;
        Ok(Self { cert, info, signer })
    }

    /// Reads the issuer from files.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| TlsError::file(p, e));
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    /// Checks that leaves this issuer signs verify against `trust` now: it signs a probe leaf
    /// and verifies it as a client would. An issuer outside the trust anchors (or expired)
    /// would hand out certificates that every peer refuses.
    pub fn check_against(&self, trust: &TrustAnchors) -> Result<(), TlsError> {
        use rustls::client::danger::ServerCertVerifier as _;
        let probe = Identity::new("issuer-check.invalid", "mesh", "probe")
            .map_err(|e| TlsError::Issuer(e.to_string()))?;
        let key = KeyPair::generate().map_err(|e| ca_failed("probe key", e))?;
        let issued = self.certify(
            &probe,
            &csr(&probe, &key)?,
            Duration::from_secs(60),
            SystemTime::now(),
        )?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            trust.store(),
            crate::provider(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        let name = rustls_pki_types::ServerName::try_from(probe.dns_name().to_owned())
            .map_err(|e| TlsError::Issuer(e.to_string()))?;
        verifier
            .verify_server_cert(
                &issued.chain[0],
                &issued.chain[1..],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| {
                TlsError::Issuer(format!(
                    "{} does not chain to the trust anchors: {e}",
                    self.info.subject
                ))
            })
    }

    /// The issuer's certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// What the issuer's certificate says.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Signs a leaf for `identity` with the CSR's public key, after checking that the CSR is
    /// signed by its key and asks for `identity` and nothing else.
    pub fn certify(
        &self,
        identity: &Identity,
        csr_der: &[u8],
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<Issued, TlsError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| TlsError::Csr(format!("not a valid signed CSR: {e}")))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(TlsError::Csr(
                "the CSR's key is not ECDSA P-256, the only key type the mesh issues for".into(),
            ));
        }
        for san in &csr.params.subject_alt_names {
            let allowed = match san {
                SanType::URI(uri) => uri.as_str() == identity.uri(),
                SanType::DnsName(dns) => dns.as_str() == identity.dns_name(),
                _ => false,
            };
            if !allowed {
                return Err(TlsError::Csr(format!(
                    "the CSR asks for {san:?}, which is not {identity}"
                )));
            }
        }
        if now >= self.info.not_after {
            return Err(TlsError::Issuer(format!(
                "the issuer {} expired at {}",
                self.info.subject,
                cert::unix_seconds(self.info.not_after)
            )));
        }
        let not_after = (now + lifetime).min(self.info.not_after);
        let mut params = leaf_params(identity)?;
        params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
        params.not_after = not_after.into();
        let leaf = params
            .signed_by(&csr.public_key, &self.signer)
            .map_err(|e| TlsError::Issuer(format!("signing failed: {e}")))?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), self.cert.clone()],
            valid_until: not_after,
        })
    }
}

/// The parameters of a leaf for `identity`: its SANs, server and client use, no CA.
fn leaf_params(identity: &Identity) -> Result<CertificateParams, TlsError> {
    let ia5 = |s: &str| {
        s.to_owned()
            .try_into()
            .map_err(|e| TlsError::Csr(format!("{s:?} is not IA5: {e}")))
    };
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![
        SanType::URI(ia5(identity.uri())?),
        SanType::DnsName(ia5(identity.dns_name())?),
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.dns_name());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    for b in &mut bytes {
        *b = fastrand::u8(..);
    }
    // Positive and without a leading zero byte, as DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A CSR for `identity`, signed by `key`: the identity's two SANs.
pub fn csr(identity: &Identity, key: &KeyPair) -> Result<Vec<u8>, TlsError> {
    // A CSR asks for names only; the CA decides the rest.
    let full = leaf_params(identity)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = full.subject_alt_names;
    params.distinguished_name = full.distinguished_name;
    let csr = params
        .serialize_request(key)
        .map_err(|e| TlsError::Csr(format!("cannot make the CSR: {e}")))?;
    Ok(csr.der().to_vec())
}

/// The issuer as loaded from files, swapped in place when the files change.
#[derive(Debug)]
pub struct IssuerFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    trust: TrustAnchors,
    current: ArcSwapOption<Issuer>,
}

impl IssuerFiles {
    /// Loads the issuer; fails when the files are missing or wrong, or when the leaves it
    /// would sign do not verify against `trust`.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        trust: &TrustAnchors,
    ) -> Result<Arc<Self>, TlsError> {
        let issuer = Issuer::from_files(cert_path, key_path)?;
        issuer.check_against(trust)?;
        tracing::info!(
            issuer = %issuer.info.subject,
            valid_until = cert::unix_seconds(issuer.info.not_after),
            "issuer loaded"
        );
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            trust: trust.clone(),
            current: ArcSwapOption::new(Some(Arc::new(issuer))),
        }))
    }

    /// The issuer in force.
    pub fn current(&self) -> Option<Arc<Issuer>> {
        self.current.load_full()
    }

    /// Reads the files again; a new issuer replaces the old one only when it loads whole and
    /// chains to the trust anchors (a half-written Secret, a key of another certificate or
    /// an issuer of another root keeps the old one, logged). Returns whether it changed.
    pub fn reload(&self) -> bool {
        let loaded = Issuer::from_files(&self.cert_path, &self.key_path)
            .and_then(|issuer| issuer.check_against(&self.trust).map(|()| issuer));
        match loaded {
            Ok(issuer) => {
                let changed = self
                    .current
                    .load()
                    .as_ref()
                    .is_none_or(|old| old.cert != issuer.cert);
                if changed {
                    tracing::info!(
                        issuer = %issuer.info.subject,
                        valid_until = cert::unix_seconds(issuer.info.not_after),
                        "issuer reloaded: new leaves are signed by it"
                    );
                    self.current.store(Some(Arc::new(issuer)));
                }
                changed
            }
            Err(e) => {
                tracing::warn!(error = %e, "issuer files changed but do not load; keeping the current issuer");
                false
            }
        }
    }

    /// Watches the files' directories and reloads on any change, until `self` is dropped by
    /// everyone else. Kubernetes updates a mounted Secret by swapping a symlink in the
    /// directory, so the directory is what is watched; a slow poll backs the watcher up where
    /// events are lost (network filesystems).
    pub fn watch(self: &Arc<Self>, poll_every: Duration) -> Result<(), TlsError> {
        use notify::Watcher as _;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the files is an event too: only changes count, or every reload
                // would trigger the next one.
                if let Ok(event) = event
                    && !matches!(event.kind, notify::EventKind::Access(_))
                {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| TlsError::Issuer(format!("cannot watch the issuer files: {e}")))?;
        let mut dirs: Vec<&Path> = [&self.cert_path, &self.key_path]
            .iter()
            .filter_map(|p| p.parent())
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .collect();
        dirs.dedup();
        for dir in dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| TlsError::Issuer(format!("cannot watch {}: {e}", dir.display())))?;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let _watcher = watcher;
            let mut poll = tokio::time::interval(poll_every);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    event = rx.recv() => if event.is_none() { return },
                    _ = poll.tick() => {}
                }
                // Files are often written in several steps: let the writer finish.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                let Some(files) = weak.upgrade() else { return };
                files.reload();
            }
        });
        Ok(())
    }
}

/// A new install's trust anchor and issuer, as PEM.
#[derive(Debug)]
pub struct Bootstrap {
    /// The trust anchor (self-signed root), PEM.
    pub anchor_pem: String,
    /// The trust anchor's key, PEM: keep it offline; it signs the next issuer.
    pub anchor_key_pem: String,
    /// The issuer's certificate, signed by the anchor, PEM.
    pub issuer_cert_pem: String,
    /// The issuer's private key (PKCS#8), PEM.
    pub issuer_key_pem: String,
    /// When the anchor expires.
    pub anchor_valid_until: SystemTime,
    /// When the issuer expires.
    pub issuer_valid_until: SystemTime,
}

/// Makes a trust anchor for `trust_domain` and an issuer under it (ECDSA P-256).
pub fn bootstrap(
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
    now: SystemTime,
) -> Result<Bootstrap, TlsError> {
    let anchor_key = KeyPair::generate().map_err(|e| ca_failed("anchor key", e))?;
    let anchor_params = ca_params(format!("root.{trust_domain}"), 1, anchor_lifetime, now);
    let anchor = anchor_params
        .self_signed(&anchor_key)
        .map_err(|e| ca_failed("anchor", e))?;
    let anchor_pem = anchor.pem();
    let anchor_key_pem = anchor_key.serialize_pem();
    let issuer_lifetime = issuer_lifetime.min(anchor_lifetime);
    let issuer = issuer_under(
        &anchor_pem,
        &anchor_key_pem,
        trust_domain,
        issuer_lifetime,
        now,
    )?;
    Ok(Bootstrap {
        anchor_pem,
        anchor_key_pem,
        issuer_cert_pem: issuer.cert_pem,
        issuer_key_pem: issuer.key_pem,
        anchor_valid_until: now + anchor_lifetime,
        issuer_valid_until: now + issuer_lifetime,
    })
}

/// A new issuer's certificate and key, PEM.
#[derive(Debug)]
pub struct NewIssuer {
    /// The certificate, signed by the anchor.
    pub cert_pem: String,
    /// Its key (PKCS#8).
    pub key_pem: String,
}

/// Makes a new issuer signed by an existing trust anchor: how the issuer is rotated (what
/// cert-manager does with a CA Issuer), with no change to what workloads trust.
pub fn issuer_under(
    anchor_pem: &str,
    anchor_key_pem: &str,
    trust_domain: &str,
    lifetime: Duration,
    now: SystemTime,
) -> Result<NewIssuer, TlsError> {
    let anchor_key =
        KeyPair::from_pem(anchor_key_pem).map_err(|e| ca_failed("the anchor's key", e))?;
    let anchor_der = cert::certs_from_pem(anchor_pem.as_bytes())
        .map_err(|e| TlsError::Issuer(format!("the anchor: {e}")))?
        .into_iter()
        .next()
        .ok_or_else(|| TlsError::Issuer("the anchor: no certificate".into()))?;
    let anchor = rcgen::Issuer::from_ca_cert_der(&anchor_der, anchor_key)
        .map_err(|e| ca_failed("the anchor", e))?;
    let key = KeyPair::generate().map_err(|e| ca_failed("issuer key", e))?;
    let mut params = ca_params(format!("identity.{trust_domain}"), 0, lifetime, now);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &anchor)
        .map_err(|e| ca_failed("issuer", e))?;
    Ok(NewIssuer {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn ca_failed(what: &str, e: rcgen::Error) -> TlsError {
    TlsError::Issuer(format!("{what}: {e}"))
}

fn ca_params(cn: String, path_len: u8, lifetime: Duration, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - CLOCK_SKEW_ALLOWANCE).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial());
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shorter than the test issuer's own life, which caps a leaf's.
    const LEAF_LIFETIME_UNDER_TEST: Duration = Duration::from_secs(1800);

    fn pki(now: SystemTime) -> (Bootstrap, Issuer) {
        let made = bootstrap(
            "cluster.local",
            Duration::from_secs(86400),
            Duration::from_secs(3600),
            now,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let issuer = Issuer::from_pem(&made.issuer_cert_pem, &made.issuer_key_pem)
            .unwrap_or_else(|e| panic!("{e}"));
        (made, issuer)
    }

    #[test]
    fn a_bundle_of_two_roots_trusts_leaves_of_either() {
        let now = SystemTime::now();
        let (old, old_issuer) = pki(now);
        let (new, new_issuer) = pki(now);
        let bundle =
            TrustAnchors::from_pem(format!("{}{}", old.anchor_pem, new.anchor_pem).as_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bundle.certs().len(), 2);
        // While a root rotates by overlap, issuers under either root are good.
        old_issuer
            .check_against(&bundle)
            .unwrap_or_else(|e| panic!("{e}"));
        new_issuer
            .check_against(&bundle)
            .unwrap_or_else(|e| panic!("{e}"));
        let only_old =
            TrustAnchors::from_pem(old.anchor_pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(new_issuer.check_against(&only_old).is_err());
    }

    #[test]
    fn leaves_are_p256_with_the_identity_and_the_skew_allowance() {
        let now = SystemTime::now();
        let (_, issuer) = pki(now);
        let id = Identity::parse("spiffe://cluster.local/ns/demo/sa/web")
            .unwrap_or_else(|e| panic!("{e}"));
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
        let issued = issuer
            .certify(
                &id,
                &csr(&id, &key).unwrap_or_else(|e| panic!("{e}")),
                LEAF_LIFETIME_UNDER_TEST,
                now,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let info = cert::inspect(&issued.chain[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.identity, Some(id.clone()));
        assert_eq!(
            cert::unix_seconds(info.not_after),
            cert::unix_seconds(now + LEAF_LIFETIME_UNDER_TEST)
        );
        assert_eq!(
            cert::unix_seconds(info.not_before),
            cert::unix_seconds(now - CLOCK_SKEW_ALLOWANCE)
        );
        // Another key type is refused.
        let p384 =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap_or_else(|e| panic!("{e}"));
        let refused = issuer.certify(
            &id,
            &csr(&id, &p384).unwrap_or_else(|e| panic!("{e}")),
            LEAF_LIFETIME_UNDER_TEST,
            now,
        );
        assert!(matches!(refused, Err(TlsError::Csr(m)) if m.contains("P-256")));
    }
}
