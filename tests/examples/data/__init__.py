"""Files the text-generation tests read: a genuine optimum export and what optimum declared (README.md)."""
