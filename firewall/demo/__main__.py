"""``python -m firewall.demo`` runs the bundled demo MCP server on stdio."""

from firewall.demo.server import main

if __name__ == "__main__":
    main(prog_name="python -m firewall.demo")
