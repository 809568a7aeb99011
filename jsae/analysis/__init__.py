"""Analysis tools: splicing, steering, logit lens, top activations, dashboards and plots."""
