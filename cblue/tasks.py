"""The PromptCBLUE task lists, label lists and main metrics (facts of the official evaluator)."""

V1_TASKS = ["CMeEE-V2", "CMeIE", "CHIP-CDN", "CHIP-CDEE", "CHIP-STS", "CHIP-CTC", "CHIP-MDCFNPC", "KUAKE-IR",
            "KUAKE-QIC", "KUAKE-QQR", "KUAKE-QTR", "MedDG", "IMCS-V2-MRG", "IMCS-V2-NER", "IMCS-V2-DAC",
            "IMCS-V2-SR"]
V2_TASKS = ["CMeEE-V2", "CMeIE-V2", "CHIP-CDN", "CHIP-CDEE", "CHIP-STS", "CHIP-CTC", "CHIP-MDCFNPC", "KUAKE-IR",
            "KUAKE-QIC", "KUAKE-QQR", "KUAKE-QTR", "MedDG", "IMCS-V2-MRG", "IMCS-V2-NER", "IMCS-V2-DAC",
            "IMCS-V2-SR", "Text2DT", "CMedCausal"]
TASKS = {"v1": V1_TASKS, "v2": V2_TASKS}

EXTRACTION = {"CMeEE-V2", "CMeIE", "CMeIE-V2", "CHIP-CDN", "CMedCausal", "CHIP-CDEE", "IMCS-V2-NER",
              "IMCS-V2-SR", "CHIP-MDCFNPC"}
ROUGE = {"MedDG", "IMCS-V2-MRG"}
TREE = {"Text2DT"}

# Classification/matching: the official label lists. Only their first entry matters to the
# score: it replaces an empty prediction. classification_report is called without labels=,
# so its classes are the union of gold labels and predicted strings.
CLS_LABELS = {
    "CHIP-STS": ["是的", "不是"],
    "KUAKE-IR": ["相关", "不相关"],
    "KUAKE-QTR": ["完全不匹配或者没有参考价值", "很少匹配有一些参考价值", "部分匹配", "完全匹配"],
    "KUAKE-QQR": ["完全一致", "后者是前者的语义子集", "后者是前者的语义父集", "语义无直接关联"],
    "CHIP-CTC": ["非上述类型", "疾病", "症状(患者感受)", "体征(医生检测）", "怀孕相关", "肿瘤进展", "疾病分期",
                 "过敏耐受", "器官组织状态", "预期寿命", "口腔相关", "药物", "治疗或手术", "设备", "护理", "诊断",
                 "实验室检查", "风险评估", "受体状态", "年龄", "特殊病人特征", "读写能力", "性别", "教育情况",
                 "居住情况", "种族", "知情同意", "参与其它试验", "研究者决定", "能力", "伦理审查", "依存性",
                 "成瘾行为", "睡眠", "锻炼", "饮食", "酒精使用", "性取向", "吸烟状况", "献血", "病例来源",
                 "残疾群体", "健康群体", "数据可及性", "含有多个类别"],
    "KUAKE-QIC": ["非上述类型", "病情诊断", "病因分析", "治疗方案", "就医建议", "指标解读", "疾病描述", "后果表述",
                  "注意事项", "功效作用", "医疗费用"],
    "IMCS-V2-DAC": ["非上述类型", "关于症状的询问", "关于症状的回答", "关于病因的询问", "关于病因的回答",
                    "关于个人基本信息的询问", "关于个人基本信息的回答", "关于已有检查和治疗的提问",
                    "关于已有检查和治疗的回答", "关于用药建议的提问", "关于用药建议的解答", "关于就医建议的提问",
                    "关于就医建议的解答", "关于注意事项的提问", "关于注意事项的解答", "给出诊断"],
}
MACRO = {"CHIP-CTC", "KUAKE-QIC", "IMCS-V2-DAC"}


def main_metric(task: str) -> str:
    if task in ROUGE:
        return "rougeL"
    if task in MACRO:
        return "macro-f1"
    if task in TREE:
        return "tree_lenv_radio"
    return "f1"


def detect_version(task_names) -> str:
    """`CMeIE` means v1; the v2-only names mean v2; neither: v2 (the current benchmark)."""
    names = set(task_names)
    v1_only, v2_only = names & {"CMeIE"}, names & {"CMeIE-V2", "Text2DT", "CMedCausal"}
    if v1_only and v2_only:
        raise ValueError(f"the data mixes v1 task {sorted(v1_only)} with v2 tasks {sorted(v2_only)}; "
                         "pass --version v1 or v2")
    return "v1" if v1_only else "v2"
