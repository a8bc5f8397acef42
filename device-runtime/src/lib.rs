//! device-runtime: the inspection appliance. Bundles are flashed into A/B slots ([`slots`]),
//! frames come from a [`capture::FrameSource`], the [`pipeline`] scores them with the bundle's
//! [`firm_shared::bundle::Detector`], verdicts go to the alert sinks ([`alerts`]) and to the web
//! status page ([`web`]); the
//! pipeline's heartbeat feeds the systemd watchdog ([`watchdog`]). Settings: [`config`] (configs/device/<site>.toml).

pub mod alerts;
pub mod capture;
pub mod config;
pub mod drift;
pub mod mailbox;
pub mod overlay;
pub mod pipeline;
pub mod run;
pub mod slots;
pub mod state;
pub mod watchdog;
pub mod web;
