//! The HTTP client that `ship` and `block import` share: whom it trusts for
//! TLS, that it never follows a redirect, and what it tells the operator
//! when TLS fails.
//!
//! Trust: Mozilla's root certificates, built in (`webpki-roots`), and the
//! authorities of `--ca-cert`. Not the system's certificate directory:
//! on Debian its hashed links also hold the self-signed "snakeoil"
//! certificate that every machine with `ssl-cert` may share, which would
//! let any such machine pass for `localhost`.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::CertificateError;

/// A client from `builder` that never follows redirects and also trusts
/// the certificate authorities in the PEM file at `ca_cert`.
///
/// Redirects are refused because the honeypot key travels in a header of
/// our own, which the HTTP library carries along to wherever a redirect
/// points, plain http and other hosts included; Valhalla never redirects.
pub fn build(
    builder: reqwest::ClientBuilder,
    ca_cert: Option<&Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = builder.redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_cert {
        for certificate in authorities(path)? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {}", describe(&error)))
}

/// The certificates of a `--ca-cert` file, each checked, so that a bad
/// file is named with its fault instead of failing later as "builder error".
fn authorities(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let file = path.display();
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read --ca-cert {file}: {error}"))?;
    if !pem.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(if pem.first() == Some(&0x30) {
            format!(
                "--ca-cert {file} looks like DER, not PEM: convert it with \
                 `openssl x509 -inform der -in {file} -out ca.pem`"
            )
        } else {
            format!("--ca-cert {file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
        });
    }

    let mut checked = rustls::RootCertStore::empty();
    let mut certificates = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let number = index + 1;
        let der =
            item.map_err(|error| format!("--ca-cert {file}: certificate {number}: {error}"))?;
        checked.add(der.clone()).map_err(|error| {
            format!("--ca-cert {file}: certificate {number} is not a usable authority: {error}")
        })?;
        let certificate = reqwest::Certificate::from_der(&der).map_err(|error| {
            format!(
                "--ca-cert {file}: certificate {number}: {}",
                describe(&error)
            )
        })?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err(format!(
            "--ca-cert {file} holds no certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certificates)
}

/// What to tell the operator when TLS itself failed rather than the
/// network; `None` for any other error. Retrying cannot mend these.
pub fn tls_refusal(error: &reqwest::Error) -> Option<String> {
    let advice = match tls_error(error)? {
        rustls::Error::InvalidCertificate(fault) => match fault {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the certificate names another host: use a host name it was issued for in the URL"
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => {
                "the server's certificate is outside its dates of validity (or this machine's \
                 clock is wrong)"
            }
            _ => {
                "the certificate is not signed by an authority this client trusts: pass \
                 --ca-cert with the authority (PEM) that signed it"
            }
        },
        rustls::Error::InvalidMessage(_) => {
            "the server does not speak TLS on this port; if it is plain http, use an http:// URL"
        }
        _ => "check the URL and the TLS settings of the server or its proxy",
    };
    Some(format!(
        "no TLS connection to the server: {}; {advice}",
        describe(error)
    ))
}

/// rustls's error travels inside `io::Error`s (two, nested, from the
/// connector), whose `source()` skips what they wrap, so each cause is
/// unwrapped too.
fn tls_error(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        let mut wrapped = Some(current);
        while let Some(inner) = wrapped {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            wrapped = inner
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        cause = current.source();
    }
    None
}

/// A transport error with its causes, which hold the useful part
/// ("connection refused"). Keys and tokens travel in headers, which no
/// error shows.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(path: &Path) -> String {
        authorities(path).expect_err("the file is refused")
    }

    #[test]
    fn a_ca_cert_file_that_holds_no_usable_certificate_is_refused_with_its_fault() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };

        let empty = write("empty.pem", b"");
        let der = write("ca.der", &[0x30, 0x82, 0x01, 0x0a, 0x02]);
        let key_only = write(
            "key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let garbage = write(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );

        assert!(refusal(&empty).contains("holds no PEM certificate"));
        assert!(refusal(&der).contains("looks like DER"));
        assert!(refusal(&key_only).contains("holds no certificate"));
        assert!(refusal(&garbage).contains("certificate 1 is not a usable authority"));
        assert!(refusal(&dir.path().join("missing.pem")).contains("cannot read --ca-cert"));
    }
}
