"""Text normalisation for transcripts (per language)."""
