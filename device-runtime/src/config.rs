//! The device configuration: `configs/device/<site>.toml` (kebab-case, unknown keys refused,
//! `schema-version` checked first). The documented example is `configs/device/example.toml`; its
//! comments are the user documentation of every key. Relative paths are relative to the config
//! file's folder, so a config and its keys can move together.

use std::path::{Path, PathBuf};

use firm_shared::detect::Backend;
use serde::{Deserialize, Serialize};

/// The config schema this build reads.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest fixed exposure accepted, microseconds (one second: far beyond any line speed).
pub const MAX_EXPOSURE_US: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DeviceConfig {
    pub schema_version: u32,
    /// Name shown on the status page and in alerts.
    #[serde(default = "default_site")]
    pub site: String,
    /// Slots, journal and flagged frames live here.
    pub state_dir: PathBuf,
    pub bundles: BundlesConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub web: WebConfig,
    /// Frames operators mark good on the status page ([`crate::overlay`]).
    #[serde(default)]
    pub overlay: crate::overlay::OverlayConfig,
}

fn default_site() -> String {
    "line-1".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BundlesConfig {
    /// Public key files (keygen's `.pub`) a bundle may be signed with.
    pub trusted_keys: Vec<PathBuf>,
    /// Largest bundle accepted (local flash and upload), bytes.
    #[serde(default = "default_max_bundle")]
    pub max_bytes: u64,
}

fn default_max_bundle() -> u64 {
    256 << 20
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SourceConfig {
    /// `dir:PATH`, `synthetic` or `v4l:/dev/videoN`.
    pub spec: String,
    /// Frames per second to pace a `dir:` or `synthetic` source at, or to request from a camera.
    pub fps: Option<f64>,
    /// `dir:` sources start again after the last image.
    #[serde(rename = "loop")]
    pub looping: bool,
    pub width: u32,
    pub height: u32,
    /// Camera pixel format: `mjpeg`, `yuyv` or `grey`.
    pub format: String,
    /// Camera: fixed exposure time in microseconds (auto exposure off), so the same part looks
    /// the same all shift; absent: the camera's auto exposure. Applied by the `v4l` source
    /// (V4L2 `exposure_time_absolute`, in 100 us steps); replays ignore it.
    pub exposure_us: Option<u32>,
    /// Synthetic source: every Nth frame carries an injected defect (0 = never).
    pub defect_every: u32,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            spec: "synthetic".into(),
            fps: Some(10.0),
            looping: false,
            width: 640,
            height: 480,
            format: "mjpeg".into(),
            exposure_us: None,
            defect_every: 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Where the bundle's encoder runs: `cpu`, `wgpu`, `cuda` or `auto` ([`Backend`]). The flash
    /// self-test runs on the same backend.
    pub backend: Backend,
    /// Named operating point of the bundle (`calibrated`, `f1-optimal`, ...).
    pub operating_point: String,
    /// A distance threshold that replaces the operating point (moves it without retraining).
    pub threshold: Option<f64>,
    /// Threads the encoder's kernels use (default: every core).
    pub threads: Option<usize>,
    /// The drift sentinel's windows and test levels (`[inference.drift]`; it runs when the
    /// bundle carries drift statistics).
    pub drift: firm_shared::drift::DriftConfig,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Cpu,
            operating_point: "calibrated".into(),
            threshold: None,
            threads: None,
            drift: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A journal file is rotated above this size, bytes.
    pub journal_max_file_bytes: u64,
    /// Journal files kept (the oldest are deleted).
    pub journal_max_files: usize,
    /// Save flagged frames as PNG with their score.
    pub save_flagged: bool,
    /// Disk budget for saved frames, bytes (the oldest are deleted first).
    pub flagged_budget_bytes: u64,
    pub webhook: Option<WebhookConfig>,
    pub gpio: Option<GpioConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            journal_max_file_bytes: 8 << 20,
            journal_max_files: 16,
            save_flagged: true,
            flagged_budget_bytes: 512 << 20,
            webhook: None,
            gpio: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives one JSON POST per alert.
    pub url: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per alert (exponential backoff between them).
    #[serde(default = "default_retries")]
    pub attempts: u32,
    /// Alerts waiting for delivery; more are dropped and counted (never blocks the pipeline).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout_ms() -> u64 {
    2000
}
fn default_retries() -> u32 {
    5
}
fn default_queue() -> usize {
    64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GpioConfig {
    /// GPIO character device, e.g. `/dev/gpiochip0`.
    pub chip: PathBuf,
    /// Line offset on that chip.
    pub line: u32,
    /// Reject pulse length, milliseconds.
    #[serde(default = "default_pulse")]
    pub pulse_ms: u64,
    /// Line is active low.
    #[serde(default)]
    pub active_low: bool,
}

fn default_pulse() -> u64 {
    50
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct WebConfig {
    /// Address of the status page and API, e.g. `0.0.0.0:8080`.
    pub listen: String,
    /// File holding the bearer token that every mutating request needs.
    pub token_file: Option<PathBuf>,
    /// Reads (status page, /api/status, /api/alerts, /metrics) without the token. When not set:
    /// public on a loopback `listen` address (127.0.0.0/8, ::1), where only this machine can
    /// connect, and token-only on any other address, so a device put on the factory LAN does not
    /// show its frames to every host there unless the config says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_reads: Option<bool>,
    /// Host names the page may be reached by, besides IP addresses and `localhost`: a request
    /// whose `Host` names anything else is refused (421), so a web page cannot reach the device
    /// through a DNS name it controls (DNS rebinding).
    pub hostnames: Vec<String>,
    /// Open connections at most ([`crate::web::serve`]). At the cap, the oldest connection with
    /// no request in flight is closed for the new one; when every connection is busy, new ones
    /// are answered 503 and closed. Keeps file descriptors for the pipeline.
    pub max_connections: usize,
    /// Event streams (`/api/events`, one per open status page) at most; more are answered 503.
    /// Below `max-connections`, so a connection is always left for /healthz.
    pub max_event_streams: usize,
    /// A connection that sends no complete request head for this long (idle, or half-sent) is
    /// closed; a request body that sends nothing for this long is cut (408). Milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            token_file: None,
            public_reads: None,
            hostnames: Vec::new(),
            max_connections: 256,
            max_event_streams: 32,
            idle_timeout_ms: 10_000,
        }
    }
}

impl WebConfig {
    /// Whether reads need no token: `public-reads` when set, else whether `listen` is a loopback
    /// address.
    pub fn reads_public(&self) -> bool {
        self.public_reads.unwrap_or_else(|| {
            self.listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback())
        })
    }

    fn check(&self) -> Result<(), String> {
        if !(2..=65_536).contains(&self.max_connections) {
            return Err(format!(
                "web.max-connections {} is outside 2..=65536",
                self.max_connections
            ));
        }
        if self.max_event_streams >= self.max_connections {
            return Err(format!(
                "web.max-event-streams {} must be below web.max-connections {} (a connection is \
                 kept for /healthz and the API)",
                self.max_event_streams, self.max_connections
            ));
        }
        if !(100..=600_000).contains(&self.idle_timeout_ms) {
            return Err(format!(
                "web.idle-timeout-ms {} is outside 100..=600000",
                self.idle_timeout_ms
            ));
        }
        if let Some(h) = self.hostnames.iter().find(|h| {
            h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }) {
            return Err(format!(
                "web.hostnames: `{h}` is not a host name (letters, digits, '-' and '.', no port)"
            ));
        }
        Ok(())
    }
}

/// A config file that cannot be used: the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl DeviceConfig {
    /// Read, check and resolve relative paths against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parse `text` as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let value: toml::Table =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().into()))?;
        match value.get("schema-version").map(|v| v.as_integer()) {
            Some(Some(v)) if v == SCHEMA_VERSION as i64 => {}
            Some(Some(v)) => {
                return Err(bad(format!(
                    "schema-version {v} is not supported (this runtime reads {SCHEMA_VERSION})"
                )));
            }
            _ => return Err(bad("schema-version = 1 is missing".into())),
        }
        let mut cfg: DeviceConfig =
            toml::from_str(text).map_err(|e| bad(e.to_string().trim_end().into()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut cfg.state_dir);
        cfg.bundles.trusted_keys.iter_mut().for_each(resolve);
        if let Some(t) = cfg.web.token_file.as_mut() {
            resolve(t);
        }
        if let Some(rest) = cfg.source.spec.strip_prefix("dir:")
            && Path::new(rest).is_relative()
        {
            cfg.source.spec = format!("dir:{}", base.join(rest).display());
        }
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.bundles.trusted_keys.is_empty() {
            return Err("bundles.trusted-keys is empty: no bundle could be installed".into());
        }
        if let Some(n) = self.inference.threads
            && !(1..=256).contains(&n)
        {
            return Err(format!("inference.threads {n} is outside 1..=256"));
        }
        if let Some(t) = self.inference.threshold
            && !t.is_finite()
        {
            return Err("inference.threshold must be a finite distance".into());
        }
        if let Err(e) = self.inference.drift.validate() {
            return Err(format!("inference.drift: {e}"));
        }
        if let Some(f) = self.source.fps
            && !(f > 0.0 && f <= 1000.0)
        {
            return Err(format!("source.fps {f} is outside (0, 1000]"));
        }
        if let Some(us) = self.source.exposure_us
            && !(1..=MAX_EXPOSURE_US).contains(&us)
        {
            return Err(format!(
                "source.exposure-us {us} is outside 1..={MAX_EXPOSURE_US} (microseconds; leave it \
                 out for the camera's auto exposure)"
            ));
        }
        if !["mjpeg", "yuyv", "grey"].contains(&self.source.format.as_str()) {
            return Err(format!(
                "source.format `{}`; expected mjpeg, yuyv or grey",
                self.source.format
            ));
        }
        if let Some(w) = &self.alerts.webhook
            && !(w.url.starts_with("http://") || w.url.starts_with("https://"))
        {
            return Err(format!(
                "alerts.webhook.url `{}` is not an http(s) URL",
                w.url
            ));
        }
        if self.web.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "web.listen `{}` is not an address like 0.0.0.0:8080",
                self.web.listen
            ));
        }
        self.web.check()?;
        if self.alerts.journal_max_files == 0 || self.alerts.journal_max_file_bytes < 4096 {
            return Err(
                "alerts.journal-max-files must be >= 1 and journal-max-file-bytes >= 4096".into(),
            );
        }
        Ok(())
    }

    /// The web token, when configured (trailing whitespace removed).
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let Some(p) = &self.web.token_file else {
            return Ok(None);
        };
        let t = std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        let t = t.trim().to_string();
        if t.len() < 16 {
            return Err(ConfigError::Invalid {
                path: p.clone(),
                why: "the token must be at least 16 characters".into(),
            });
        }
        Ok(Some(t))
    }

    pub fn slots_dir(&self) -> PathBuf {
        self.state_dir.join("slots")
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.state_dir.join("journal")
    }

    pub fn flagged_dir(&self) -> PathBuf {
        self.state_dir.join("flagged")
    }

    pub fn overlay_dir(&self) -> PathBuf {
        self.state_dir.join("overlay")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../configs/device/example.toml");

    #[test]
    fn the_documented_example_parses_and_resolves_paths() {
        let c = DeviceConfig::parse(EXAMPLE, Path::new("/etc/firm/site.toml")).unwrap();
        assert_eq!(c.state_dir, Path::new("/var/lib/firm-inspect"));
        assert_eq!(
            c.bundles.trusted_keys,
            [PathBuf::from("/etc/firm/keys/bundle.pub")]
        );
        assert_eq!(c.inference.operating_point, "calibrated");
        assert_eq!(c.web.max_connections, 256);
        assert_eq!(c.web.max_event_streams, 32);
        assert_eq!(c.web.idle_timeout_ms, 10_000);
        assert_eq!(c.web.hostnames, ["inspect-line-1.plant.local"]);
    }

    #[test]
    fn reads_are_public_only_on_loopback_unless_the_config_says() {
        let p = Path::new("/x/site.toml");
        let base = "schema-version = 1\nstate-dir = 's'\n[bundles]\ntrusted-keys = ['k']\n[web]\n";
        let public = |web: &str| {
            DeviceConfig::parse(&format!("{base}{web}"), p)
                .unwrap()
                .web
                .reads_public()
        };
        assert!(public(""), "the default listen address is 127.0.0.1");
        assert!(public("listen = '127.0.0.1:9000'\n"));
        assert!(public("listen = '[::1]:9000'\n"));
        assert!(
            !public("listen = '0.0.0.0:8080'\n"),
            "the LAN needs the token"
        );
        assert!(!public("listen = '192.168.1.20:8080'\n"));
        assert!(!public("listen = '[::]:8080'\n"));
        assert!(public("listen = '0.0.0.0:8080'\npublic-reads = true\n"));
        assert!(!public("listen = '127.0.0.1:8080'\npublic-reads = false\n"));
        let c = DeviceConfig::parse(EXAMPLE, Path::new("/etc/firm/site.toml")).unwrap();
        assert!(c.web.reads_public(), "the example says public-reads = true");
    }

    #[test]
    fn web_limits_are_checked() {
        let p = Path::new("/x/site.toml");
        let base = "schema-version = 1\nstate-dir = 's'\n[bundles]\ntrusted-keys = ['k']\n[web]\n";
        let err = |web: &str| {
            DeviceConfig::parse(&format!("{base}{web}"), p)
                .unwrap_err()
                .to_string()
        };
        let e = err("max-connections = 1\nmax-event-streams = 0\n");
        assert!(
            e.contains("/x/site.toml") && e.contains("web.max-connections 1"),
            "{e}"
        );
        let e = err("max-connections = 8\nmax-event-streams = 8\n");
        assert!(e.contains("web.max-event-streams 8"), "{e}");
        let e = err("idle-timeout-ms = 5\n");
        assert!(e.contains("web.idle-timeout-ms 5"), "{e}");
        let e = err("hostnames = ['plant.local:8080']\n");
        assert!(
            e.contains("web.hostnames") && e.contains("plant.local:8080"),
            "{e}"
        );
        let ok = DeviceConfig::parse(
            &format!(
                "{base}max-connections = 8\nmax-event-streams = 7\nhostnames = ['Cam-1.local']\n"
            ),
            p,
        )
        .unwrap();
        assert_eq!((ok.web.max_connections, ok.web.max_event_streams), (8, 7));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let p = Path::new("/x/site.toml");
        let e = DeviceConfig::parse(
            "schema-version = 1\nstate-dir = 's'\n[bundles]\ntrusted-keys = ['k']\nsurprise = 1\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/x/site.toml") && e.contains("surprise"), "{e}");
        let e = DeviceConfig::parse("schema-version = 2\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema-version 2"), "{e}");
        let e = DeviceConfig::parse("state-dir = 's'\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("schema-version = 1 is missing"), "{e}");
        let base = "schema-version = 1\nstate-dir = 's'\n[bundles]\ntrusted-keys = ['k']\n";
        let e = DeviceConfig::parse(&format!("{base}[source]\nfps = 0.0\n"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.fps"), "{e}");
        let e = DeviceConfig::parse(&format!("{base}[source]\nexposure-us = 0\n"), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/site.toml") && e.contains("source.exposure-us 0"),
            "{e}"
        );
        let e = DeviceConfig::parse(&format!("{base}[source]\nexposure-us = -5\n"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exposure-us"), "{e}");
        let ok = DeviceConfig::parse(&format!("{base}[source]\nexposure-us = 8000\n"), p).unwrap();
        assert_eq!(ok.source.exposure_us, Some(8000));
        let e = DeviceConfig::parse(&format!("{base}[web]\nlisten = 'anywhere'\n"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("web.listen"), "{e}");
        let e = DeviceConfig::parse(
            "schema-version = 1\nstate-dir = 's'\n[bundles]\ntrusted-keys = []\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("trusted-keys is empty"), "{e}");
    }
}
