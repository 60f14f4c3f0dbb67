//! The whole test suite in one binary (each test binary is a slow link on
//! two cores): unit tests of the pure modules, integration tests of the
//! real gateway against a scripted fake upstream, and browser tests.

mod support;

mod browser;
mod completion;
mod config;
mod gateway;
mod hardening;
mod openai_api;
mod policy;
mod protocol;
mod providers;
mod proxy;
mod resume;
mod sse;
