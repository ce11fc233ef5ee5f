"""Writes the sample data in PromptCBLUE/: realistic records of every PromptCBLUE task in the
official format (input, target, answer_choices, task_type, task_dataset, sample_id).

The records are built from small vocabularies, the official answer layouts
(see ../shared/docs/promptcblue-formats.md) and several prompt wordings per task as the official
data phrases them, so a tiny model learns in minutes to answer each task in its own format,
however the prompt is worded. Run
`python tools/make_sample_data.py` to regenerate; the output is deterministic.
  train.json / dev.json / test.json   PromptCBLUE v2 task names (18 tasks; test has empty targets)
  dev_v1.json                         PromptCBLUE v1 task names (16 tasks: CMeIE, no Text2DT/CMedCausal)
  chat.json                           not PromptCBLUE: long, chatty answers to conversational questions, the
                                      tiny model's supervised stage before tuning (tools/sample_chat.py)
"""
import json
import os
import random

DISEASES = ["高血压", "糖尿病", "肺炎", "胃炎", "支气管炎", "冠心病", "贫血", "肝炎", "肠炎", "湿疹", "哮喘", "痛风"]
SYMPTOMS = ["发热", "咳嗽", "腹泻", "头痛", "胸闷", "呕吐", "乏力", "皮疹", "腹痛", "头晕", "气短", "失眠"]
DRUGS = ["阿莫西林", "布洛芬", "二甲双胍", "奥美拉唑", "头孢克肟", "蒙脱石散", "氨溴索", "硝苯地平", "益生菌"]
PARTS = ["胃", "肺", "肝", "心脏", "皮肤", "肠道", "头部", "胸部", "腹部", "咽喉"]
EXAMS = ["血常规", "胸片", "心电图", "胃镜", "尿常规", "肝功能", "血糖", "CT"]
PROCEDURES = ["手术", "输液", "雾化", "针灸", "透析", "化疗"]
BACTERIA = ["幽门螺杆菌", "肺炎链球菌", "大肠杆菌", "金黄色葡萄球菌"]
PEOPLE = ["患者", "患儿", "老人", "孕妇"]

CTC_LABELS = ["疾病", "药物", "年龄", "怀孕相关", "过敏耐受", "治疗或手术", "实验室检查", "知情同意"]
QIC_LABELS = ["病情诊断", "病因分析", "治疗方案", "就医建议", "指标解读", "疾病描述", "后果表述", "注意事项",
              "功效作用", "医疗费用", "非上述类型"]
DAC_LABELS = ["关于症状的询问", "关于症状的回答", "关于用药建议的解答", "关于病因的询问", "给出诊断",
              "关于就医建议的解答", "关于注意事项的提问"]
QTR_LABELS = ["完全不匹配或者没有参考价值", "很少匹配有一些参考价值", "部分匹配", "完全匹配"]
QQR_LABELS = ["完全一致", "后者是前者的语义子集", "后者是前者的语义父集", "语义无直接关联"]
MDC_LABELS = ["已有症状疾病或者假设未来可能发生的疾病等", "未患有症状疾病",
              "没有回答、不知道、回答不明确或者模棱两可不好推断", "无实际意义的不标注或者和病人当前的状态独立不标注"]
SR_LABELS = ["没有患有该症状", "患有该症状", "无法根据上下文确定病人是否患有该症状"]


def phrase(r, templates: list[str], **fields) -> str:
    """One of a task's prompt wordings (the official data phrases each task several ways)."""
    return r.choice(templates).format(**fields)


CMEEE_PROMPTS = ["{text}\n这个句子里面实体有哪些？\n实体选项：{types}\n答：",
                 "实体抽取：\n{text}\n选项：{types}\n答：",
                 "{text}\n问题：句子中的{types}实体是什么？\n答：",
                 "找出指定的实体：\n{text}\n类型选项：{types}\n答："]


def cmeee(r):
    types = ["疾病", "临床表现", "药物", "身体部位", "医学检验项目"]
    d, s, drug, part, exam = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS), r.choice(PARTS), r.choice(EXAMS)
    form = r.randrange(3)
    if form == 0:
        text, ents = f"{d}患者常出现{s}，{part}不适，可口服{drug}治疗。", {"疾病": [d], "临床表现": [s], "药物": [drug], "身体部位": [part]}
    elif form == 1:
        text, ents = f"{exam}提示{d}，需要复查。", {"医学检验项目": [exam], "疾病": [d]}
    else:
        text, ents = "建议多休息，注意饮食。", {}
    inp = phrase(r, CMEEE_PROMPTS, text=text, types="，".join(types))
    if not ents:
        return inp, "上述句子没有指定类型实体", types
    lines = [f"{t}实体：{'，'.join(ents.get(t, []))}" for t in types]
    return inp, "上述句子中的实体包含：\n" + "\n".join(lines), types


IMCS_NER_PROMPTS = ["问诊对话的实体抽取：{text}\n选项：{types}\n答：",
                    "下面对话中的{types}实体有哪些？\n{text}\n答：",
                    "找出下面句子中的{types}\n{text}\n答："]


def imcs_ner(r):
    types = ["症状", "药物", "检查"]
    s, drug, exam = r.choice(SYMPTOMS), r.choice(DRUGS), r.choice(EXAMS)
    text = f"孩子{s}两天了，吃了{drug}，要不要做{exam}"
    inp = phrase(r, IMCS_NER_PROMPTS, text=text, types="，".join(types))
    tgt = f"上述句子中的实体包含：\n症状实体：{s}\n药物实体：{drug}\n检查实体：{exam}"
    return inp, tgt, types


CMEIE_PROMPTS = ["找出句子中的具有{rels}关系类型的头尾实体对：\n{text}\n答：",
                 "{text}\n这个句子里面具有一定医学关系的实体组有哪些？\n三元组关系选项：{rels}\n答：",
                 "找出指定的三元组：\n{text}\n实体间关系：{rels}\n答：",
                 "给出句子中的{rels}关系类型的实体对：{text}\n答："]


def cmeie(r):
    rels = ["临床表现", "药物治疗", "实验室检查"]
    d, s, drug = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS)
    text = f"{d}的主要表现为{s}，常用{drug}治疗。"
    inp = phrase(r, CMEIE_PROMPTS, text=text, rels="，".join(rels))
    tgt = "\n".join([f"具有临床表现关系的头尾实体对如下：头实体为{d}，尾实体为{s}。",
                     f"具有药物治疗关系的头尾实体对如下：头实体为{d}，尾实体为{drug}。",
                     "具有实验室检查关系的头尾实体对如下："])
    return inp, tgt, rels


CDEE_NOTE = "临床发现事件由主体词，发生状态，描述词和解剖部位组成"
CDEE_PROMPTS = ["{text}\n问题：句子中的临床发现事件及其属性是什么？\n说明：{note}\n答：",
                "临床发现事件抽取：{text}\n事件抽取说明：{note}\n答：",
                "找出句子中的临床发现事件及其属性：\n{text}\n事件抽取说明：{note}\n答："]


def cdee(r):
    s, part = r.choice(SYMPTOMS), r.choice(PARTS)
    state, desc = r.choice([("", "反复"), ("否定", ""), ("不确定", "加重")])
    neg = "无" if state == "否定" else ("疑似" if state == "不确定" else "")
    text = f"{r.choice(PEOPLE)}{part}{neg}{desc}{s}3天。"
    inp = phrase(r, CDEE_PROMPTS, text=text, note=CDEE_NOTE)
    tgt = f"上述句子中的临床发现事件如下：\n主体词：{s}；发生状态：{state}；描述词：{desc}；解剖部位：{part}"
    return inp, tgt, []


# A hospital's wording -> its ICD-10 standard term.
CDN_TERMS = [("右肺鳞癌术后", "鳞状细胞癌"), ("食管鳞状细胞癌", "鳞状细胞癌"), ("胃窦腺癌", "腺癌"),
             ("左肺腺癌（待查）", "腺癌"), ("高血压3级", "高血压"), ("原发性高血压病", "高血压"),
             ("2型糖尿病伴血糖控制不佳", "糖尿病"), ("社区获得性肺炎", "肺炎"), ("慢性浅表性胃炎", "胃炎"),
             ("急性支气管炎", "支气管炎"), ("缺铁性贫血", "贫血"), ("慢性乙型病毒性肝炎", "肝炎"),
             ("急性胃肠炎", "肠炎"), ("冠状动脉粥样硬化性心脏病", "冠心病"), ("支气管哮喘急性发作", "哮喘")]
CDN_STANDARD = sorted({t for _, t in CDN_TERMS})
CDN_NOTE = "从候选的若干个ICD-10诊断标准词中选择出与原诊断描述匹配的词"
CDN_PROMPTS = ["诊断实体的语义标准化：\n{raw}\n选项：{cands}\n说明：{note}\n答：",
               "给出下面诊断原词的标准化：\n{raw}\n实体选项：{cands}\n说明：{note}\n答：",
               "{raw}\n归一化后的标准词是？\n候选集：{cands}\n说明：{note}\n答：",
               "诊断归一化：\n{raw}\n候选集：{cands}\n说明：{note}\n答："]


def cdn(r):
    raw, target = r.choice(CDN_TERMS)
    picks = [target] + r.sample([t for t in CDN_STANDARD if t != target], 3)
    r.shuffle(picks)
    inp = phrase(r, CDN_PROMPTS, raw=raw, cands="，".join(picks), note=CDN_NOTE)
    return inp, target, picks


CTC_PROMPTS = ["判断临床试验筛选标准的类型：\n{text}\n选项：{labels}\n答：",
               "确定试验筛选标准的类型：\n{text}\n选项：{labels}\n答：",
               "{text}\n请问是什么类型？\n类型选项：{labels}\n答：",
               "{text}\n是什么临床试验筛选标准类型？\n临床试验筛选标准选项：{labels}\n答："]


def ctc_criterion(r) -> tuple[str, str]:
    """(label, criterion text) of one clinical-trial screening criterion."""
    label = r.choice(CTC_LABELS)
    text = {"疾病": f"患有{r.choice(DISEASES)}者", "药物": f"近期服用{r.choice(DRUGS)}者", "年龄": "年龄18至65岁",
            "怀孕相关": "妊娠或哺乳期妇女", "过敏耐受": f"对{r.choice(DRUGS)}过敏者",
            "治疗或手术": f"近三个月接受过{r.choice(PROCEDURES)}", "实验室检查": f"{r.choice(EXAMS)}异常者",
            "知情同意": "签署知情同意书"}[label]
    return label, text


def ctc(r):
    label, text = ctc_criterion(r)
    return phrase(r, CTC_PROMPTS, text=text, labels="，".join(CTC_LABELS)), label, CTC_LABELS


STS_PROMPTS = [("以下两句话的意思相同的吗？\n“{a}”，“{b}”\n选项：是的，不是\n答：", ["是的", "不是"]),
               ("我想知道下面两句话的意思是否相同。\n“{a}”，“{b}”。\n选项：是的，不是\n答：", ["是的", "不是"]),
               ("下面两个句子语义是“相同”或“不同”？\n“{a}”，“{b}”。\n选项：相同，不同\n答：", ["相同", "不同"]),
               ("句子A：{a}\n句子B：{b}\n这两句话表达的医学意思相同吗？\n选项：相同，不同\n答：", ["相同", "不同"])]


def sts(r):
    d = r.choice(DISEASES)
    same = r.random() < 0.5
    a = r.choice([f"{d}如何治疗", f"{d}怎么治"])
    b = r.choice([f"{d}怎么治疗", f"{d}该怎么治好"]) if same else \
        f"{r.choice([x for x in DISEASES if x != d])}{r.choice(['吃什么好', '如何治疗', '能治好吗'])}"
    template, choices = r.choice(STS_PROMPTS)
    return template.format(a=a, b=b), choices[0] if same else choices[1], choices


MDC_PROMPTS = ["对下述对话中的临床发现标识阴阳性：\n{dialog}\n选项：{labels}\n答：",
               "医疗对话中临床发现实体的阴阳性判别：\n{dialog}\n阴阳性选项：{labels}\n答：",
               "{dialog}\n上述对话中临床发现实体的阴阳性是什么？\n选项：{labels}\n答："]


def mdcfnpc(r):
    s1, s2 = r.sample(SYMPTOMS, 2)
    dialog = f"患者：孩子{s1}两天了\n医生：有没有{s2}？\n患者：没有{s2}"
    inp = phrase(r, MDC_PROMPTS, dialog=dialog, labels="，".join(MDC_LABELS))
    tgt = f"上述对话中临床发现实体以及其阴阳性判别如下：\n{s1}：{MDC_LABELS[0]}\n{s2}：{MDC_LABELS[1]}"
    return inp, tgt, MDC_LABELS


SR_PROMPTS = ["根据对话历史和当前对话，抽取症状实体，以及这些实体的阴阳性：\n对话历史：\n{history}\n当前对话：\n{current}\n候选：{labels}\n答：",
              "找出当前对话中的症状，并判断阴阳性：\n对话历史：\n{history}\n当前对话：\n{current}\n阴阳性选项：{labels}\n答：",
              "对话历史：\n{history}\n当前对话：\n{current}\n上述当前对话中的症状及其阴阳性是什么？\n选项：{labels}\n答："]


def sr(r):
    s1, s2 = r.sample(SYMPTOMS, 2)
    inp = phrase(r, SR_PROMPTS, history=f"医生：孩子{s1}吗？", current=f"患者：{s1}了，没有{s2}",
                 labels="，".join(SR_LABELS))
    tgt = f"当前对话中的症状及其阴阳性判断为：\n{s1}：{SR_LABELS[1]}\n{s2}：{SR_LABELS[0]}"
    return inp, tgt, SR_LABELS


QIC_PROMPTS = ["判断下面搜索词的意图：\n{q}\n选项：{labels}\n答：",
               "{q}\n这个医疗搜索词是什么意图分类？\n选项：{labels}\n答：",
               "请问是什么意图类型？\n{q}\n搜索意图选项：{labels}\n答："]


def qic(r):
    d = r.choice(DISEASES)
    label, q = r.choice([("病因分析", f"为什么会得{d}"), ("治疗方案", f"{d}怎么治"), ("医疗费用", f"治{d}要花多少钱"),
                         ("注意事项", f"{d}要注意什么"), ("病情诊断", f"{r.choice(SYMPTOMS)}是不是{d}"),
                         ("功效作用", f"{r.choice(DRUGS)}有什么作用")])
    return phrase(r, QIC_PROMPTS, q=q, labels="，".join(QIC_LABELS)), label, QIC_LABELS


IR_PROMPTS = ["医疗搜索：{q}\n回答内容：{a}\n上述搜索和回答是否相关？\n选项: 相关，不相关\n答：",
              "医疗搜索：{q}\n以下回答内容是否能够回答搜索问题？\n回答内容：{a}\n选项: 相关，不相关\n答：",
              "以下回答内容是否与这里的医疗搜索相关？\n医疗搜索：{q}\n回答内容：{a}\n选项: 相关，不相关\n答："]


def ir(r):
    d = r.choice(DISEASES)
    rel = r.random() < 0.5
    ans = f"{d}的治疗以药物为主，需遵医嘱" if rel else f"{r.choice([x for x in DISEASES if x != d])}患者应注意休息"
    return phrase(r, IR_PROMPTS, q=f"{d}怎么治疗", a=ans), "相关" if rel else "不相关", ["相关", "不相关"]


QTR_PROMPTS = ["下面两个句子的语义相似程度是{labels}中的哪一种？\n“{a}”，“{b}”\n答：",
               "“{a}”和“{b}”的意思有多相似？\n选项：{labels}\n答：",
               "下面的搜索词和页面标签的意思有多相同？\n搜索词：{a}\n页面标签：{b}\n选项：{labels}\n答：",
               "以下两句话的意思相同的吗？\n“{a}”，“{b}”。\n选项：{labels}\n答："]


def qtr(r):
    d, s = r.choice(DISEASES), r.choice(SYMPTOMS)
    label, b = r.choice([(QTR_LABELS[3], f"{d}怎么办"), (QTR_LABELS[2], f"{d}和{s}"), (QTR_LABELS[0], f"{r.choice(DRUGS)}价格")])
    return phrase(r, QTR_PROMPTS, a=f"{d}怎么办", b=b, labels="，".join(QTR_LABELS)), label, QTR_LABELS


QQR_PROMPTS = ["我想知道下面两个搜索词的意思有多相同。\n“{a}”，“{b}”。\n选项：{labels}\n答：",
               "下面两个搜索词之间的语义关系是{labels}中的哪一种？\n“{a}”，“{b}”\n答：",
               "“{a}”和“{b}”这两个搜索词是什么关系？\n选项：{labels}\n答："]


def qqr(r):
    d = r.choice(DISEASES)
    label, b = r.choice([(QQR_LABELS[0], f"{d}怎么办"), (QQR_LABELS[1], f"{d}早期怎么办"), (QQR_LABELS[3], f"{r.choice(DRUGS)}说明书")])
    return phrase(r, QQR_PROMPTS, a=f"{d}怎么办", b=b, labels="，".join(QQR_LABELS)), label, QQR_LABELS


DAC_PROMPTS = ["确定问诊对话当前句子的意图:\n问诊对话历史：\n{sent}\n类型选项：{labels}\n答：",
               "判断问诊中的当前句子的意图类型：\n{sent}\n选项：{labels}\n答：",
               "{sent}\n这句话的意图是什么？\n意图选项：{labels}\n答："]


def dac(r):
    s, drug = r.choice(SYMPTOMS), r.choice(DRUGS)
    label, sent = r.choice([("关于症状的询问", f"医生：孩子有{s}吗？"), ("关于症状的回答", f"患者：有点{s}"),
                            ("关于用药建议的解答", f"医生：可以吃点{drug}"), ("给出诊断", f"医生：考虑是{r.choice(DISEASES)}")])
    return phrase(r, DAC_PROMPTS, sent=sent, labels="，".join(DAC_LABELS)), label, DAC_LABELS


MRG_PROMPTS = ["总结下面问诊对话，并给出问诊报告\n问诊对话历史：\n{dialog}\n答：",
               "根据下面的问诊对话自动生成对应的诊疗报告：\n问诊对话历史：\n{dialog}\n答：",
               "问诊对话的诊疗报告生成：\n{dialog}\n答："]


def mrg(r):
    s, d, drug, exam = r.choice(SYMPTOMS), r.choice(DISEASES), r.choice(DRUGS), r.choice(EXAMS)
    dialog = f"患者：孩子{s}三天了\n医生：做过{exam}吗？\n患者：还没有\n医生：考虑{d}，可以用{drug}"
    tgt = (f"上述问诊对话的诊疗报告如下：\n主诉：{s}三天。\n现病史：患儿{s}三天。\n辅助检查：暂缺。\n既往史：不详。\n"
           f"诊断：{d}。\n建议：{drug}，必要时{exam}。")
    return phrase(r, MRG_PROMPTS, dialog=dialog), tgt, []


MEDDG_PROMPTS = ["自动生成问诊对话中的医生下一句回复：\n{dialog}\n答：",
                 "根据下面的问诊对话，给出医生的回复：\n问诊对话历史：\n{dialog}\n答：",
                 "{dialog}\n医生应该如何回复？\n答："]


def meddg(r):
    s, exam, drug = r.choice(SYMPTOMS), r.choice(EXAMS), r.choice(DRUGS)
    dialog, reply = r.choice([
        (f"患者：最近{s}，怎么办？（女，30岁）", f"{s}多久了？有没有其他不舒服？"),
        (f"患者：{s}一个多月了，一直没好", f"建议去医院做个{exam}看看。"),
        (f"患者：{s}两天了，吃了{drug}有用吗？", f"{drug}可以先吃着，多喝水，注意休息。")])
    return phrase(r, MEDDG_PROMPTS, dialog=dialog), reply, []


CAUSAL_PROMPTS = ["根据给定的文本抽取因果关系、条件关系和上下位关系三元组：\n{text}\n答：",
                  "找出下面文本中的因果关系三元组：\n{text}\n答：",
                  "{text}\n上述文本中有哪些因果关系？\n答："]


def cmedcausal(r):
    d, s = r.sample(DISEASES, 1)[0], r.choice(SYMPTOMS)
    inp = phrase(r, CAUSAL_PROMPTS, text=f"{d}可以导致{s}。")
    tgt = f"根据给定的文本抽取的因果关系三元组如下：\n头实体：{d}；尾实体：{s}"
    return inp, tgt, ["因果关系", "条件关系", "上下位关系"]


TEXT2DT_PROMPTS = ["请根据诊疗指南抽取诊疗决策树：\n{text}\n答：",
                   "{text}\n从上述诊疗指南中生成诊疗决策树。\n答：",
                   "根据下面的诊疗文本，构建诊疗决策树：\n{text}\n答："]


def text2dt(r):
    d, drug1, drug2, s = r.choice(DISEASES), *r.sample(DRUGS, 2), r.choice(SYMPTOMS)
    inp = phrase(r, TEXT2DT_PROMPTS, text=f"{d}患者若伴有{s}，则用{drug1}，否则用{drug2}。")
    tgt = ("根据给定的指南文本抽取的诊疗决策树如下：\n"
           f'节点0：role=C；logical_rel=null；triples=[["{d}", "临床表现", "{s}"]]\n'
           f'节点1：role=D；logical_rel=null；triples=[["{d}", "药物治疗", "{drug1}"]]\n'
           f'节点2：role=D；logical_rel=null；triples=[["{d}", "药物治疗", "{drug2}"]]')
    return inp, tgt, []


TASKS = {  # task_dataset: (task_type, builder)
    "CMeEE-V2": ("ner", cmeee), "IMCS-V2-NER": ("ner", imcs_ner), "CMeIE-V2": ("spo_generation", cmeie),
    "CHIP-CDEE": ("event_extraction", cdee), "CHIP-CDN": ("normalization", cdn), "CHIP-CTC": ("cls", ctc),
    "CHIP-STS": ("cls", sts), "CHIP-MDCFNPC": ("attr_cls", mdcfnpc), "IMCS-V2-SR": ("attr_cls", sr),
    "KUAKE-QIC": ("cls", qic), "KUAKE-IR": ("matching", ir), "KUAKE-QTR": ("matching", qtr),
    "KUAKE-QQR": ("matching", qqr), "IMCS-V2-DAC": ("cls", dac), "IMCS-V2-MRG": ("report_generation", mrg),
    "MedDG": ("response_generation", meddg), "CMedCausal": ("spo_generation", cmedcausal),
    "Text2DT": ("text2dt", text2dt),
}
V1_ONLY_RENAME = {"CMeIE-V2": "CMeIE"}
V2_ONLY = {"CMedCausal", "Text2DT"}


def build(split: str, per_task: int, seed: int, v1: bool = False, with_targets: bool = True) -> list[dict]:
    r = random.Random(seed)
    out = []
    for name, (task_type, fn) in TASKS.items():
        if v1 and name in V2_ONLY:
            continue
        task = V1_ONLY_RENAME.get(name, name) if v1 else name
        for i in range(per_task):
            inp, tgt, choices = fn(r)
            out.append({"input": inp, "target": tgt if with_targets else "", "answer_choices": choices,
                        "task_type": task_type, "task_dataset": task, "sample_id": f"{split}-{task}-{i}"})
    random.Random(seed + 1).shuffle(out)
    return out


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "PromptCBLUE")
    os.makedirs(root, exist_ok=True)
    files = {"train.json": build("train", 40, 1), "dev.json": build("dev", 5, 2),
             "test.json": build("test", 3, 3, with_targets=False), "dev_v1.json": build("dev_v1", 5, 4, v1=True)}
    for name, records in files.items():
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        print(f"PromptCBLUE/{name}: {len(records)} records")
    from sample_chat import build_chat  # beside this file; imports its vocabularies from here

    chat = build_chat(680, seed=5)
    with open(os.path.join(root, "chat.json"), "w", encoding="utf-8") as f:
        for rec in chat:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"PromptCBLUE/chat.json: {len(chat)} chat pairs")


if __name__ == "__main__":
    main()
