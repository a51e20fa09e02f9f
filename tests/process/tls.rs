//! A TLS-terminating proxy in front of a test server, as operators put one
//! in front of Valhalla, with a certificate for 127.0.0.1 signed by a
//! private certificate authority that the test makes with the `openssl`
//! command (Debian's `openssl` package).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// The proxy's address and the authority that signed its certificate.
pub struct TlsProxy {
    pub base_url: String,
    /// PEM of the private certificate authority, for `--ca-cert`.
    pub ca_cert: PathBuf,
}

/// Makes a private authority and a certificate for 127.0.0.1 in `dir`,
/// then proxies TLS connections on a new port to `upstream` (plain HTTP on
/// 127.0.0.1). The proxy lives as long as the test's runtime.
pub async fn start_tls_proxy(dir: &Path, upstream: u16) -> TlsProxy {
    let ca_cert = dir.join("ca.pem");
    let (server_cert, server_key) = issue_certificates(dir, &ca_cert);

    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&server_cert)
        .expect("the server certificate")
        .collect::<Result<_, _>>()
        .expect("PEM certificates");
    let key = PrivateKeyDer::from_pem_file(&server_key).expect("the server key");
    // ring is the one crypto provider this build has, so it is the default.
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and its key");
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                let Ok(mut client) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });

    TlsProxy {
        base_url: format!("https://127.0.0.1:{port}"),
        ca_cert,
    }
}

/// Writes `ca_cert` and returns the server's certificate and key files.
fn issue_certificates(dir: &Path, ca_cert: &Path) -> (PathBuf, PathBuf) {
    let ca_key = dir.join("ca.key");
    let server_key = dir.join("server.key");
    let request = dir.join("server.csr");
    let server_cert = dir.join("server.pem");
    let extensions = dir.join("server.ext");
    std::fs::write(
        &extensions,
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\n\
         keyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n",
    )
    .expect("the extensions file");

    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=Valhalla test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        path(&ca_key),
        "-out",
        path(ca_cert),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        path(&server_key),
        "-out",
        path(&request),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        path(&request),
        "-CA",
        path(ca_cert),
        "-CAkey",
        path(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        path(&extensions),
        "-out",
        path(&server_cert),
    ]);
    (server_cert, server_key)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn openssl(arguments: &[&str]) {
    let output = Command::new("openssl")
        .args(arguments)
        .output()
        .expect("the `openssl` command (Debian package `openssl`) runs");
    assert!(
        output.status.success(),
        "openssl {arguments:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
