"""`python -m gateway.approvals_cli`, as the `gateway-approvals` script."""

from gateway.approvals_cli.commands import main

if __name__ == "__main__":
    main()
