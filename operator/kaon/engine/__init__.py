"""The engine the controllers run on: hub and member clients (the fleet), object caches, work
queues, the admission ledger, the clock, and hub writes. No policy lives here."""
