"""Policy packs: loading them, evaluating them against the views, and rendering the results."""
