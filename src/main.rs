use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = valhalla::cli::Cli::parse();
    valhalla::cli::init_logging(&cli.log);
    match valhalla::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("valhalla: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
