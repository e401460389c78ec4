"""Healing: distil a rewritten model back to the original's behaviour (see ``heal.train``)."""
