"""The KoboldAI API (and KoboldCpp's extras), as Kobold front-ends speak it."""
