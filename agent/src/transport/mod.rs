//! Moving bytes: SSH sessions, SFTP copies, local copies, remote commands.
