"""What the gateway and the workers share: settings, Redis keys, records, scripts, tools."""
