"""Generation stage: sampling, stop rules and the KV-cached decoding loop."""
