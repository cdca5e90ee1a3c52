//! `ember serve`'s web console flags: where the console is served (`--console-listen`), or not
//! at all (`--no-console`).

use std::net::SocketAddr;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Serve the web console on this address (with the API it calls, so that its requests stay
    /// on its origin) instead of at `/console/` on `--listen` [default: on `--listen`].
    #[arg(long, env = "EMBER_CONSOLE_LISTEN", conflicts_with = "no_console")]
    pub console_listen: Option<SocketAddr>,
    /// Do not serve the web console (`/console/`); the API is unchanged.
    #[arg(long, env = "EMBER_NO_CONSOLE")]
    pub no_console: bool,
}
