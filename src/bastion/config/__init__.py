"""Configuration: catalog, registry, settings (paths, env), feature flags."""
