"""What a user reads: `matloop status` and export (`status`), the science report (`science`), its figures (`plots`)
and structure drawings (`structure_view`)."""
