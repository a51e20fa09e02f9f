//! Valhalla: a security orchestration service. Policy, blocklist, action
//! workflow and honeypot bridge over SQLite or PostgreSQL.
#![forbid(unsafe_code)]

pub mod actions;
pub mod audit;
pub mod auth;
pub mod blocklist;
pub mod bootstrap;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crowdsec;
pub mod dashboard;
pub mod demo;
pub mod detection;
pub mod error;
pub mod honeypots;
pub mod http;
pub mod incidents;
pub mod openapi;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod shipper;
pub mod storage;
pub mod time;
