"""kit inside other frameworks: :mod:`kit_contrib.integrations.lightning` (a LightningModule
around a kit model, and ``KitCallback``, kit's hooks from Lightning's Trainer)."""
