//! The site map: one JSON file shared by every site's agent.
