//! A blocking client of the Kubernetes Container Runtime Interface (CRI v1)
//! over a runtime's unix socket: what kubelet says to containerd, for tests
//! and the lab. Each call runs on the client's own current-thread tokio
//! runtime, so callers stay synchronous like the rest of the lab.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, ListPodSandboxRequest, PodSandbox, PodSandboxConfig,
    PodSandboxStatusRequest, PodSandboxStatusResponse, RemovePodSandboxRequest,
    RunPodSandboxRequest, StatusRequest, StatusResponse, StopPodSandboxRequest, VersionRequest,
    VersionResponse,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{io_err, LabError, Result};

/// How long one CRI call may take (RunPodSandbox includes every CNI ADD).
pub const CALL_TIMEOUT: Duration = Duration::from_mins(2);

pub struct CriClient {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl CriClient {
    /// A client of the runtime listening on `socket`. The connection is made
    /// lazily, on the first call, so this succeeds before the runtime is up.
    pub fn new(socket: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting the CRI client's runtime for", socket))?;
        let path = socket.to_owned();
        // The URI is a placeholder: the connector below always dials the socket.
        let channel = {
            let _entered = rt.enter();
            Endpoint::from_static("http://cri.invalid")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
        };
        Ok(Self {
            socket: socket.to_owned(),
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T, F>(&self, call: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let outcome = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, fut).await });
        match outcome {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(LabError::Cri {
                call: call.to_string(),
                socket: self.socket.clone(),
                source: Box::new(status),
            }),
            Err(_) => Err(LabError::Cri {
                call: call.to_string(),
                socket: self.socket.clone(),
                source: Box::new(tonic::Status::deadline_exceeded(format!(
                    "no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))),
            }),
        }
    }

    pub fn version(&self) -> Result<VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// The runtime's conditions (RuntimeReady, NetworkReady).
    pub fn status(&self) -> Result<StatusResponse> {
        let mut c = self.runtime.clone();
        self.call("Status", async move {
            c.status(StatusRequest { verbose: false }).await
        })
    }

    /// Whether the runtime reports condition `kind` (e.g. `NetworkReady`) true,
    /// and its reason and message.
    pub fn condition(&self, kind: &str) -> Result<(bool, String)> {
        let status = self.status()?;
        let found = status
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .find(|c| c.r#type == kind);
        Ok(match found {
            Some(c) => (c.status, format!("{}: {}", c.reason, c.message)),
            None => (false, format!("the runtime does not report {kind}")),
        })
    }

    /// RunPodSandbox; returns the sandbox id.
    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let mut c = self.runtime.clone();
        self.call("RunPodSandbox", async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let pod_sandbox_id = id.to_string();
        self.call("StopPodSandbox", async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(|_| ())
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let pod_sandbox_id = id.to_string();
        self.call("RemovePodSandbox", async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(|_| ())
    }

    /// PodSandboxStatus with the runtime's verbose `info` (containerd: the
    /// pid, the OCI spec with the network namespace's path, the CNI result).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        let mut c = self.runtime.clone();
        let pod_sandbox_id = id.to_string();
        self.call("PodSandboxStatus", async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: true,
            })
            .await
        })
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        self.call("ListPodSandbox", async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }

    /// Whether the runtime's image store has `image`.
    pub fn image_present(&self, image: &str) -> Result<bool> {
        let mut c = self.images.clone();
        let image = image.to_string();
        self.call("ImageStatus", async move {
            c.image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image,
                    ..ImageSpec::default()
                }),
                verbose: false,
            })
            .await
        })
        .map(|r| r.image.is_some())
    }
}

/// The network namespace path of a sandbox, from containerd's verbose status
/// (`info["info"].runtimeSpec.linux.namespaces[type=network].path`).
pub fn sandbox_netns(status: &PodSandboxStatusResponse) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(status.info.get("info")?).ok()?;
    info.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?
        .get("path")?
        .as_str()
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// The sandbox's IPv4 address as the runtime reports it.
pub fn sandbox_ip(status: &PodSandboxStatusResponse) -> Option<std::net::Ipv4Addr> {
    status.status.as_ref()?.network.as_ref()?.ip.parse().ok()
}
