"""Commands beyond the loop itself: the chat session, export, status and the dry-run estimate."""
