"""``python -m firewall`` runs the mcpwall command line."""

from firewall.cli import main

if __name__ == "__main__":
    main()
