"""Provider adapters behind one Protocol, a registry keyed by `kind`, pricing and routing."""
