"""LLM-as-judge scorers through litellm: one ``llm_judge`` scorer, judge templates as YAML data.

>>> from scorers.llm import builtin_templates
>>> builtin_templates()
['answer_relevance', 'correctness', 'faithfulness', 'instruction_following', 'rubric', 'toxicity']
"""

from .judge import JudgeCall, LLMJudge, parse_verdict
from .templates import JudgeTemplate, Scale, builtin_templates, fence, load_template

__all__ = [
    "JudgeCall",
    "JudgeTemplate",
    "LLMJudge",
    "Scale",
    "builtin_templates",
    "fence",
    "load_template",
    "parse_verdict",
]
