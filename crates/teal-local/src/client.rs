//! The CLI side of the control API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ApiError;
use crate::daemon::{control_addr_file, control_token_file};

/// Talks to the daemon that owns a state directory.
pub struct Client {
    base: String,
    token: String,
}

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no teal daemon is running for {dir} (no {file}); start one with `teal local serve`")]
    NotRunning { dir: PathBuf, file: PathBuf },
    #[error("{0}")]
    Transport(String),
    /// The daemon refused the request (status, message).
    #[error("{1}")]
    Refused(u16, String),
}

impl Client {
    pub fn for_state_dir(dir: &Path) -> Result<Client, ClientError> {
        let read = |f: PathBuf| {
            std::fs::read_to_string(&f)
                .map(|s| s.trim().to_string())
                .map_err(|_| ClientError::NotRunning {
                    dir: dir.to_path_buf(),
                    file: f,
                })
        };
        let addr = read(control_addr_file(dir))?;
        let token = read(control_token_file(dir))?;
        Ok(Client {
            base: format!("http://{addr}"),
            token,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let a = crate::http::request(
            method,
            &url,
            Some(&self.token),
            body,
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| ClientError::Transport(format!("cannot reach the teal daemon: {e}")))?;
        if !(200..300).contains(&a.status) {
            let msg = serde_json::from_slice::<ApiError>(&a.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&a.body).into_owned());
            return Err(ClientError::Refused(a.status, msg));
        }
        serde_json::from_slice(&a.body)
            .map_err(|e| ClientError::Transport(format!("unexpected answer from the daemon: {e}")))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Transport(e.to_string()))?;
        self.call("POST", path, Some(bytes)).await
    }
}
