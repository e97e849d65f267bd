"""Account rules: the file's schema and validation (``schema``), matching and rendering (``matching``),
and the sandboxed templates (``templating``). Callers use the names below."""

from service.rules.matching import PlannedAction, lookup_path, matches, plan, render_action
from service.rules.schema import (
                                  KNOWN_EVENT_TYPES,
                                  OPERATOR,
                                  STORED_REFERENCE,
                                  SUPPLIERS,
                                  TENANT,
                                  AccountSpec,
                                  ConnectionSpec,
                                  CrmSpec,
                                  Rule,
                                  RulesError,
                                  RulesFile,
                                  RulesProblem,
                                  load_rules,
                                  parse_yaml,
                                  redact_connection,
                                  resolve_crm_secret,
                                  validate_connection,
)

__all__ = ["KNOWN_EVENT_TYPES", "OPERATOR", "STORED_REFERENCE", "SUPPLIERS", "TENANT", "AccountSpec",
           "ConnectionSpec", "CrmSpec", "PlannedAction", "Rule", "RulesError", "RulesFile", "RulesProblem",
           "load_rules", "lookup_path", "matches", "parse_yaml", "plan", "redact_connection", "render_action",
           "resolve_crm_secret", "validate_connection"]
