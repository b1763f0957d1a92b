"""Graph + recorded state -> Plan: actions and their reasons, the saved plan, feasibility, integrity."""
