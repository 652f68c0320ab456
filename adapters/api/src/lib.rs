//! Adapters dock department systems onto tiersync (filled in by the adapters issue).
