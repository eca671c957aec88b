"""`ank dashboard`: a read-only HTTP API and live web page (services.dashboard.shell);
its data model is services.dashboard.core (pure), its options services.dashboard.options."""
