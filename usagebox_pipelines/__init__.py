"""usagebox-pipelines: usage events → Delta tables → rated usage → invoices and reconciliations."""

__version__ = "0.1.0"
