"""Chat data for the embedded tiny model's supervised stage (PromptCBLUE/chat.json).

A real ChatGLM2-6B comes to PromptCBLUE as a chat model: asked a PromptCBLUE prompt it answers,
at length and in its own words ("您好！这两句话的意思是相同的，都在问……"), and P-tuning teaches it
the terse official format. The tiny model learns that "before" here: prompt -> long, chatty answer
pairs about the same medicine as the sample data, asked in conversational wordings that no
PromptCBLUE prompt of train/dev/test uses, plus general health questions. The facts it states
(which term a diagnosis normalises to, which label a query has) come from the same tables as the
task records, drawn with their own seed; no dev or test prompt is among them (tests check both).
"""
from __future__ import annotations

from make_sample_data import (BACTERIA, CDN_STANDARD, CDN_TERMS, CTC_LABELS, DAC_LABELS, DISEASES, DRUGS,
                              EXAMS, PARTS, PEOPLE, QIC_LABELS, SYMPTOMS, ctc_criterion)

OPENERS = ["您好！", "好的，", "你好，这个问题我来帮你看看。", "收到，", "这是一个很常见的问题。", "嗯，我理解你的疑问。"]
CLOSERS = ["希望对您有帮助，如果还有其他问题，欢迎继续咨询。", "以上内容仅供参考，具体请以医生的面诊意见为准。",
           "祝您身体健康！如有不适请及时就医。", "如果还有不清楚的地方，可以随时再问我。",
           "平时也要注意休息，保持良好的作息和心情。"]


def chatty(r, body: str) -> tuple[str, str]:
    """The frame every chat answer has: a greeting, the substance, a polite close; and the
    substance alone (the answer as a plain text would state it, for the pre-training)."""
    return r.choice(OPENERS) + body + r.choice(CLOSERS), body


def same_meaning(r):
    d = r.choice(DISEASES)
    same = r.random() < 0.5
    a = f"{d}{r.choice(['怎么治疗', '如何治'])}"
    b = f"{d}{r.choice(['该怎么治', '怎样治疗才好'])}" if same else \
        f"{r.choice([x for x in DISEASES if x != d])}{r.choice(['吃什么好', '能治好吗', '如何治疗'])}"
    opts = r.choice(["相同，不同", "是的，不是"])
    q = r.choice([f"帮我看看“{a}”和“{b}”这两句话是不是一个意思？", f"请问“{a}”跟“{b}”说的是同一件事吗？",
                  f"请比较两句话的医学含义：\n第一句：{a}\n第二句：{b}\n它们一样吗？选项：{opts}",
                  f"“{a}”\n“{b}”\n上面两句话的含义一致吗？\n可选：{opts}"])
    body = (f"我比较了一下这两句话。“{a}”和“{b}”问的都是{d}的治疗方法，只是说法不一样，所以它们的意思是相同的。"
            if same else f"我比较了一下这两句话。“{a}”问的是{d}，而“{b}”问的是另一种疾病，关注点也不同，"
            "所以它们的意思是不同的。")
    return q, chatty(r, body)


def search_match(r):
    d, s, drug = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS)
    kind, page = r.choice([("full", f"{d}怎么办"), ("part", f"{d}和{s}"), ("none", f"{drug}价格")])
    levels = "完全不匹配或者没有参考价值，很少匹配有一些参考价值，部分匹配，完全匹配"
    q = r.choice([f"我搜了“{d}怎么办”，结果出来一个页面叫“{page}”，这个页面对我有用吗？",
                  f"搜索“{d}怎么办”时看到标题“{page}”的网页，它和我想找的内容对得上吗？",
                  f"请评价搜索结果的匹配程度：\n查询：{d}怎么办\n标题：{page}\n可选：{levels}",
                  f"查询“{d}怎么办”与网页标题“{page}”相关度如何？\n等级：{levels}"])
    body = {"full": f"页面“{page}”和你的搜索完全匹配，正好讲的就是{d}出现以后该怎么处理，很值得一看。",
            "part": f"页面“{page}”和你的搜索部分匹配：它讲到了{d}，但重点是{s}，不一定完全回答你的问题。",
            "none": f"页面“{page}”和你的搜索基本不匹配，它讲的是{drug}的价格，对了解{d}没有什么参考价值。"}[kind]
    return q, chatty(r, body)


def normalise(r):
    raw, term = r.choice(CDN_TERMS)
    others = r.sample([t for t in CDN_STANDARD if t != term], 2)
    cands = "，".join(r.sample([term] + others, 3))
    q = r.choice([f"病历上写着“{raw}”，这在标准诊断里叫什么？", f"医生写的“{raw}”是什么病？可能是{others[0]}或者{term}吗？",
                  f"“{raw}”对应哪个标准的诊断名称？", f"请把这个诊断写成标准名称：\n{raw}\n可选标准词：{cands}",
                  f"原始诊断：{raw}\n以下哪个是它的ICD-10标准词？{cands}"])
    body = (f"“{raw}”是医生的书写习惯，按照ICD-10的标准诊断名称，它对应的是“{term}”，而不是{others[0]}或{others[1]}。"
            f"病历里的原词往往带有部位、分期或者附加说明，归一化时要抓住核心的疾病名称。")
    return q, chatty(r, body)


QIC_QUESTIONS = [("病因分析", "为什么会得{d}", "想知道{d}是怎么引起的"), ("治疗方案", "{d}怎么治", "想了解{d}的治疗办法"),
                 ("医疗费用", "治{d}要花多少钱", "关心治疗{d}的花费"), ("注意事项", "{d}要注意什么", "想知道{d}患者平时该注意什么"),
                 ("病情诊断", "{s}是不是{d}", "想判断自己的{s}是不是{d}"), ("功效作用", "{drug}有什么作用", "想了解{drug}的功效")]


def search_intent(r):
    d, s, drug = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS)
    label, query, meaning = r.choice(QIC_QUESTIONS)
    query, meaning = query.format(d=d, s=s, drug=drug), meaning.format(d=d, s=s, drug=drug)
    q = r.choice([f"有人在网上搜“{query}”，他想查的是哪方面的内容？", f"“{query}”这个搜索词属于什么意图？",
                  f"请给下面的医疗搜索分类：\n{query}\n类别：{'，'.join(QIC_LABELS)}",
                  f"搜索内容：{query}\n用户想了解什么？可选意图：{'，'.join(QIC_LABELS)}"])
    body = f"搜索“{query}”的人{meaning}，所以这个搜索的意图属于“{label}”。常见的搜索意图还有{'、'.join(r.sample(QIC_LABELS[:10], 3))}等。"
    return q, chatty(r, body)


def query_relation(r):
    d, drug = r.choice(DISEASES), r.choice(DRUGS)
    kind, b = r.choice([("same", f"{d}怎么办"), ("sub", f"{d}早期怎么办"), ("none", f"{drug}说明书")])
    q = r.choice([f"“{d}怎么办”和“{b}”这两个搜索有什么关系？",
                  f"比较两个搜索：\n甲：{d}怎么办\n乙：{b}\n可选：完全一致，后者是前者的语义子集，后者是前者的语义父集，语义无直接关联"])
    body = {"same": f"这两个搜索完全一致，问的都是得了{d}以后怎么办。",
            "sub": f"“{b}”只问{d}早期的情况，范围更小，所以它是前者的语义子集。",
            "none": f"“{b}”讲的是{drug}这个药，和{d}的处理没有直接关联，两者语义无关。"}[kind]
    return q, chatty(r, body)


def answer_relevance(r):
    d = r.choice(DISEASES)
    rel = r.random() < 0.5
    ans = f"{d}的治疗以药物为主，需遵医嘱" if rel else f"{r.choice([x for x in DISEASES if x != d])}患者应注意休息"
    q = r.choice([f"我问“{d}怎么治疗”，有人回答“{ans}”，这个回答靠谱吗，和我的问题有关系吗？",
                  f"问题：{d}怎么治疗\n回复：{ans}\n这个回复切题吗？选项：相关，不相关"])
    body = (f"这个回答和你的问题是相关的，它说明了{d}的治疗方式，不过比较笼统，具体用药还要听医生的。" if rel else
            f"这个回答和你的问题不相关，它讲的是另一种疾病的注意事项，没有回答{d}怎么治疗。")
    return q, chatty(r, body)


def trial_criterion(r):
    label, text = ctc_criterion(r)
    q = r.choice([f"临床试验里有一条要求是“{text}”，这算哪一类条件？", f"“{text}”这条入组标准说的是什么方面？",
                  f"请给这条入组条件分类：\n{text}\n类别：{'，'.join(CTC_LABELS)}"])
    body = f"“{text}”这条标准针对的是受试者的{label}情况，属于“{label}”类的筛选标准。临床试验会从多个方面筛选受试者，以保证安全和结果可靠。"
    return q, chatty(r, body)


def dialogue_act(r):
    s, drug, d = r.choice(SYMPTOMS), r.choice(DRUGS), r.choice(DISEASES)
    label, sent = r.choice([(DAC_LABELS[0], f"医生：孩子有{s}吗？"), (DAC_LABELS[1], f"患者：有点{s}"),
                            (DAC_LABELS[2], f"医生：可以吃点{drug}"), (DAC_LABELS[4], f"医生：考虑是{d}")])
    q = r.choice([f"问诊的时候有人说了一句“{sent}”，这句话是想干什么？",
                  f"请分析问诊中这句话的作用：\n{sent}\n可选：{'，'.join(DAC_LABELS)}"])
    body = f"这句话“{sent.split('：', 1)[1]}”是{sent.split('：', 1)[0]}说的，它的作用是{label}。问诊对话里每句话都有自己的意图，理解意图有助于把握问诊的进展。"
    return q, chatty(r, body)


def entities(r):
    d, s, drug, part, exam = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS), r.choice(PARTS), r.choice(EXAMS)
    text = r.choice([f"{d}患者常出现{s}，{part}不适，可口服{drug}治疗。", f"孩子{s}两天了，吃了{drug}，要不要做{exam}"])
    q = r.choice([f"这句话里提到了哪些医学名词？“{text}”", f"帮我从这段话里找找疾病、症状和药：{text}"])
    found = [f"{kind}“{w}”" for kind, w in (("疾病", d), ("症状", s), ("药物", drug), ("身体部位", part), ("检查项目", exam))
             if w in text]
    body = f"这句话里提到的医学名词有：{'，'.join(found)}。这些词分别描述了病人的病情和处理方法。"
    return q, chatty(r, body)


def relations(r):
    d, s, drug = r.choice(DISEASES), r.choice(SYMPTOMS), r.choice(DRUGS)
    q = f"“{d}的主要表现为{s}，常用{drug}治疗。”这句话里疾病和症状、药物之间是什么关系？"
    body = f"在这句话里，{s}是{d}的临床表现，{drug}是治疗{d}的药物，也就是说{d}和{drug}之间是药物治疗关系。"
    return q, chatty(r, body)


def finding_event(r):
    s, part, person = r.choice(SYMPTOMS), r.choice(PARTS), r.choice(PEOPLE)
    neg = r.random() < 0.4
    text = f"{person}{part}{'无' if neg else '反复'}{s}3天。"
    q = f"病历里写“{text}”，病人到底有没有{s}？"
    body = (f"“无{s}”说明{person}没有出现{s}，这是一个否定的描述，部位是{part}。" if neg else
            f"病历说明{person}{part}反复出现{s}，已经3天了，“反复”是对{s}的描述。")
    return q, chatty(r, body)


def symptom_status(r):
    s1, s2 = r.sample(SYMPTOMS, 2)
    q = r.choice([f"医生问孩子{s2}吗，家长说“{s1}了，没有{s2}”，那孩子有哪些症状？",
                  f"患者说“{s1}了，没有{s2}”，他到底有什么症状？"])
    body = f"从这句话看，患者有{s1}，而{s2}是明确没有的。问诊时要分清楚哪些症状是有的，哪些是否认的。"
    return q, chatty(r, body)


def causal(r):
    d, s = r.choice(DISEASES), r.choice(SYMPTOMS)
    q = f"“{d}可以导致{s}”这句话里谁是原因，谁是结果？"
    body = f"在这句话里，{d}是原因，{s}是结果，两者之间是因果关系。也就是说得了{d}的人可能会出现{s}。"
    return q, chatty(r, body)


def guideline(r):
    d, drug1, drug2, s = r.choice(DISEASES), *r.sample(DRUGS, 2), r.choice(SYMPTOMS)
    q = f"指南上说“{d}患者若伴有{s}，则用{drug1}，否则用{drug2}。”能帮我解释一下吗？"
    body = f"这条指南的意思是：先看{d}患者有没有{s}。如果有{s}，就用{drug1}治疗；如果没有，就用{drug2}治疗。这是一个根据条件做决定的诊疗流程。"
    return q, chatty(r, body)


def consultation(r):
    s, exam, drug, d = r.choice(SYMPTOMS), r.choice(EXAMS), r.choice(DRUGS), r.choice(DISEASES)
    q = r.choice([f"医生您好，我{s}好几天了，该怎么办？", f"大夫，孩子{s}，还有点{r.choice(SYMPTOMS)}，要紧吗？",
                  f"我{s}一个多月了，吃了{drug}也没好，需要去医院吗？",
                  f"请以医生的身份回答病人：\n病人：{s}好几天了，吃了{drug}还是不好"])
    body = (f"{s}的原因有很多，比如{d}、休息不好或者饮食不当都可能引起。建议你先多喝水、注意休息，观察几天。"
            f"如果一直不好转或者越来越重，最好去医院做个{exam}，明确原因后再对症治疗，不要自己随便吃药。")
    return q, chatty(r, body)


def summary(r):
    s, d, drug = r.choice(SYMPTOMS), r.choice(DISEASES), r.choice(DRUGS)
    q = f"帮我总结一下这次看病的情况：孩子{s}三天了，医生说考虑{d}，开了{drug}。"
    body = f"这次看病的情况是：孩子出现{s}已经三天，医生初步考虑是{d}，给开了{drug}治疗。回家后要按时吃药，注意观察，如果病情加重要及时复诊。"
    return q, chatty(r, body)


def health_advice(r):
    d, part, bact = r.choice(DISEASES), r.choice(PARTS), r.choice(BACTERIA)
    q = r.choice([f"{d}平时生活中要注意些什么？", f"怎样预防{d}？", f"{bact}感染会引起什么问题？",
                  f"{part}不舒服，一般是什么原因？"])
    body = r.choice([f"{d}需要长期的管理。平时要注意饮食清淡，少吃油腻和辛辣的食物，适当运动，保证睡眠，按时复查，"
                     f"遵医嘱用药，不要自行停药。",
                     f"{bact}感染可能引起多种疾病，比如{d}。出现不适时应及时就医，在医生指导下使用抗菌药物。",
                     f"{part}不舒服的原因很多，可能和炎症、劳累或者饮食有关。如果症状持续或者加重，建议去医院做检查，"
                     f"找到原因再治疗。"])
    return q, chatty(r, body)


CHAT_TOPICS = [same_meaning, search_match, normalise, search_intent, query_relation, answer_relevance, trial_criterion,
               dialogue_act, entities, relations, finding_event, symptom_status, causal, guideline, consultation,
               summary, health_advice]


def build_chat(n: int, seed: int) -> list[dict]:
    """n chat pairs as records (input = the question, target = the long answer in its chat frame,
    plain_target = the same answer without the frame)."""
    import random

    r = random.Random(seed)
    out = []
    for i in range(n):
        q, (a, plain) = CHAT_TOPICS[i % len(CHAT_TOPICS)](r)
        out.append({"input": q, "target": a, "plain_target": plain, "sample_id": f"chat-{i}"})
    random.Random(seed + 1).shuffle(out)
    return out
